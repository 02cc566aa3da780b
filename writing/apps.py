from django.apps import AppConfig


class WritingConfig(AppConfig):
    name = "writing"
    verbose_name = "Writing"

    def ready(self) -> None:
        from writing import signals  # noqa: F401 - connects the receivers
