from django.apps import AppConfig


class ClawConfig(AppConfig):
    name = "claw"
    verbose_name = "Conversations"

    def ready(self) -> None:
        from claw import services, signals  # noqa: F401  (connects the task-failure alert)
        from tasks_app import alerts

        # the platform's staff alerts reach staff as notifications and e-mail
        alerts.register_notifier(services.send_staff_alert)
