"""The default periodic tasks, installed idempotently after every migrate."""

from __future__ import annotations

from django.conf import settings
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

CLEANUP = "claw: cleanup expired results"
HEALTH = "claw: check task health"
ROLLUPS = "claw: fold rollups"


def ensure_default_schedules() -> list[str]:
    """Create the default schedules that are missing; return the names created.

    Existing ones are left alone, so an operator's edits (a different time,
    disabled) survive every deploy.
    """
    created = []
    if not PeriodicTask.objects.filter(name=CLEANUP).exists():
        crontab, _ = CrontabSchedule.objects.get_or_create(
            minute="0",
            hour="2",
            day_of_week="*",
            day_of_month="*",
            month_of_year="*",
            timezone=settings.TIME_ZONE,
        )
        PeriodicTask.objects.create(
            name=CLEANUP,
            task="tasks_app.cleanup_expired_results",
            crontab=crontab,
            queue="default",
            description="Deletes expired results, task records and events.",
        )
        created.append(CLEANUP)
    if not PeriodicTask.objects.filter(name=HEALTH).exists():
        every, _ = IntervalSchedule.objects.get_or_create(
            every=30, period=IntervalSchedule.MINUTES
        )
        PeriodicTask.objects.create(
            name=HEALTH,
            task="tasks_app.check_task_health",
            interval=every,
            queue="default",
            description="Marks lost tasks, re-publishes vanished ones, raises alerts.",
        )
        created.append(HEALTH)
    if not PeriodicTask.objects.filter(name=ROLLUPS).exists():
        every, _ = IntervalSchedule.objects.get_or_create(
            every=settings.CLAW_ROLLUP_SECONDS, period=IntervalSchedule.SECONDS
        )
        PeriodicTask.objects.create(
            name=ROLLUPS,
            task="tasks_app.fold_rollups",
            interval=every,
            queue="default",
            # A fold that waited this long is superseded by the next one.
            expire_seconds=60,
            description="Folds new task events into the dashboard's and "
            "/metrics' per-minute rollups.",
        )
        created.append(ROLLUPS)
    return created
