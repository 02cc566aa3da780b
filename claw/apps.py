from django.apps import AppConfig


class ClawConfig(AppConfig):
    name = "claw"
    verbose_name = "Conversations"

    def ready(self) -> None:
        from claw import signals  # noqa: F401  (connects the task-failure alert)
