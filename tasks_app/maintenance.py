"""Cleanup and self-healing of the ledger: the bodies of the maintenance tasks."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from django_celery_results.models import TaskResult

from claw.celery import app
from tasks_app import services, workers
from tasks_app.models import TaskRecord

logger = logging.getLogger(__name__)

BATCH = 1000


def _delete_in_batches(queryset) -> int:
    """Delete rows in pk-ordered batches: short transactions, constant memory."""
    deleted = 0
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:BATCH])
        if not ids:
            return deleted
        queryset.model.objects.filter(pk__in=ids).delete()
        deleted += len(ids)


def cleanup_expired() -> dict[str, int]:
    """Delete results past CELERY_RESULT_EXPIRES and final records past retention."""
    now = timezone.now()
    results = _delete_in_batches(
        TaskResult.objects.filter(
            date_done__lt=now - timedelta(seconds=settings.CELERY_RESULT_EXPIRES)
        )
    )
    records = 0
    for state, days in settings.CLAW_RECORD_RETENTION_DAYS.items():
        records += _delete_in_batches(
            TaskRecord.objects.filter(
                state=state, finished_at__lt=now - timedelta(days=days)
            )
        )
    return {"results": results, "records": records}


def mark_lost_tasks() -> int:
    """STARTED past the task's hard time limit on a worker that no longer answers.

    Signals never arrive from a worker that was killed outright, so these records
    would stay STARTED forever.
    """
    alive = set(workers.ping())
    lost = 0
    for record in TaskRecord.objects.filter(state=TaskRecord.State.STARTED):
        task = app.tasks.get(record.name)
        limit = getattr(task, "time_limit", None) or settings.CELERY_TASK_TIME_LIMIT
        too_old = record.started_at and record.started_at < timezone.now() - timedelta(
            seconds=limit
        )
        if too_old and record.worker not in alive:
            lost += services.mark_lost(
                record, reason=f"worker {record.worker or '?'} stopped answering"
            )
    return lost


def check_health() -> dict[str, int]:
    return {"lost": mark_lost_tasks()}
