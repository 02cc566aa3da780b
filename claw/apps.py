from django.apps import AppConfig


class ClawConfig(AppConfig):
    name = "claw"
    verbose_name = "Conversations"

    def ready(self) -> None:
        from claw import conversations, services, signals  # noqa: F401  (signals: the task-failure alert)
        from tasks_app import alerts, lifecycle
        from tasks_app.checks import between, register_setting_rules
        from tasks_app.models import TaskState

        # a reply task that ends outside its body fails its message
        lifecycle.on_end(
            conversations.TASK_NAME,
            handler=conversations.reply_ended,
            states=(TaskState.FAILURE, TaskState.REVOKED),
        )

        register_setting_rules(
            "claw",
            [
                (
                    "AI_RATE_LIMIT_BACKEND",
                    lambda v: v in ("auto", "redis", "database"),
                    "auto, redis or database",
                ),
                ("AI_PASSAGES", between(1, 100), "between 1 and 100"),
            ],
        )
        # the platform's staff alerts reach staff as notifications and e-mail
        alerts.register_notifier(services.send_staff_alert)
        # LLM tokens and reply times on /metrics, from rollups of the replies
        # that tasks_app's rollup fold adds up off the hot path
        from claw.metrics import LEDGER, LlmCollector
        from tasks_app import metrics, rollups

        metrics.register_collector(LlmCollector())
        rollups.register_ledger(LEDGER)
