from django.apps import AppConfig


class ClawConfig(AppConfig):
    name = "claw"
    verbose_name = "Conversations"
