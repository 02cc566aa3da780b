from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import Error, Warning, register
from django.db.models.signals import post_migrate

from tasks_app.checks import register_setting_rules


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "Tasks"

    def ready(self) -> None:
        # signals connects Celery receivers; worker_commands registers claw_report
        from tasks_app import kombu_fixes, signals, worker_commands  # noqa: F401

        kombu_fixes.install()  # a worker survives a Redis restart (see there)

        post_migrate.connect(_install_schedules, sender=self)
        register_setting_rules(
            "tasks_app",
            [
                (
                    "CELERY_AI_POOL",
                    lambda v: v in ("threads", "prefork"),
                    "threads or prefork",
                ),
                ("CELERY_AI_CONCURRENCY", lambda v: v >= 1, "at least 1"),
                ("CLAW_LEASE_SECONDS", lambda v: v > 0, "above 0"),
                ("CLAW_STARTED_AFTER_SECONDS", lambda v: v >= 0, "0 or more"),
            ],
        )


def _install_schedules(**kwargs) -> None:
    from tasks_app.schedules import ensure_default_schedules

    ensure_default_schedules()


@register()
def visibility_timeout_check(app_configs, **kwargs) -> list:
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    timeout = options.get("visibility_timeout")
    if settings.IS_FILESYSTEM_BROKER or timeout is None:
        return []
    from tasks_app.services import longest_time_limit

    longest = longest_time_limit()  # of the registered tasks, as configured
    if settings.CELERY_TASK_ACKS_LATE and timeout <= longest:
        return [
            Warning(
                f"Broker visibility_timeout ({timeout}s) is not longer than the longest "
                f"task time limit ({longest:g}s)",
                hint="Long tasks will be redelivered while they run, and run twice. "
                "Raise CELERY_VISIBILITY_TIMEOUT.",
                id="tasks_app.W001",
            )
        ]
    deferral = _longest_deferral()
    if settings.CELERY_TASK_ACKS_LATE and timeout <= deferral:
        return [
            Warning(
                f"Broker visibility_timeout ({timeout}s) is not longer than the "
                f"longest rate-limit deferral ({deferral:g}s)",
                hint="A deferred task waits as an unacknowledged ETA message, which "
                "Redis hands out again after the visibility timeout. Raise "
                "CELERY_VISIBILITY_TIMEOUT or shorten the rate-limit window.",
                id="tasks_app.W001",
            )
        ]
    return []


@register()
def lease_check(app_configs, **kwargs) -> list:
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout")
    if timeout is None or timeout > settings.CLAW_LEASE_SECONDS:
        return []
    return [
        Warning(
            f"CLAW_LEASE_SECONDS ({settings.CLAW_LEASE_SECONDS:g}s) is not shorter "
            f"than the broker visibility_timeout ({timeout}s)",
            hint="When a worker dies outright, Redis hands its task out again after "
            "the visibility timeout; while the dead worker's lease still looks live "
            "that delivery is refused as a duplicate. Lower CLAW_LEASE_SECONDS.",
            id="tasks_app.W002",
        )
    ]


@register()
def started_after_check(app_configs, **kwargs) -> list:
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout")
    after = settings.CLAW_STARTED_AFTER_SECONDS
    limit = min(settings.CLAW_LEASE_SECONDS / 3, (timeout or float("inf")) / 4)
    if after <= limit:
        return []
    return [
        Warning(
            f"CLAW_STARTED_AFTER_SECONDS ({after:g}s) is not far below the lease "
            f"({settings.CLAW_LEASE_SECONDS:g}s) and the broker visibility timeout "
            f"({timeout}s)",
            hint="A run writes STARTED and takes its lease only after this long. "
            "Runs whose delivery plus this exceeds half the visibility timeout "
            "write STARTED at once (tasks_app.starts), so the guarantee holds, but "
            "at most a third of the lease and a quarter of the visibility timeout "
            "keeps most runs on the fast path. Lower CLAW_STARTED_AFTER_SECONDS.",
            id="tasks_app.W003",
        )
    ]


def _longest_deferral() -> float:
    """Seconds a task over a cluster-wide rate limit may be deferred at most."""
    from tasks_app.ratelimit import MAX_WINDOWS_AHEAD

    rates = (settings.AI_RATE_LIMIT, settings.KNOWLEDGE_VECTORIZE_RATE_LIMIT)
    return max(((MAX_WINDOWS_AHEAD + 1) * r[1] for r in rates if r), default=0)


@register()
def json_only_check(app_configs, **kwargs) -> list:
    accepted = set(settings.CELERY_ACCEPT_CONTENT) | set(
        settings.CELERY_RESULT_ACCEPT_CONTENT
    )
    if accepted - {"json", "application/json"}:
        return [
            Error(
                f"Celery accepts {sorted(accepted)}; only JSON is safe",
                hint="Pickle and yaml let anyone who can write to the broker run code.",
                id="tasks_app.E001",
            )
        ]
    return []
