"""Records moved through the real transitions (tasks_app.services) at chosen
times, without a broker: what the rollups, dashboard and stats tests fold."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta
from unittest.mock import patch

from django.utils import timezone

from tasks_app import services
from tasks_app.models import TaskRecord


@contextmanager
def clock(at: datetime):
    with patch("django.utils.timezone.now", return_value=at):
        yield


def run(
    outcome: str = "succeeded",
    *,
    name: str = "tests.add",
    queue: str | None = None,
    owner=None,
    at: datetime | None = None,
    wait: float = 0.5,
    runtime: float = 0.2,
) -> TaskRecord:
    """Submit a record at `at`, start it `wait` seconds later and end it with
    outcome `runtime` seconds after that: succeeded, failed, lost, revoked
    (cancelled while queued: never started), retried (one automatic retry, then
    succeeded; the second run waits and runs as long as the first) or started
    (still running)."""
    at = at or timezone.now() - timedelta(seconds=wait + 2 * runtime + 1)
    with patch("tasks_app.services.publish"), patch("tasks_app.workers.revoke"):
        with clock(at):
            record = services.submit(name, args=[1, 2], owner=owner, queue=queue)
        if outcome == "revoked":
            with clock(at + timedelta(seconds=wait)):
                services.cancel(record)
            return record
        now = at + timedelta(seconds=wait)
        with clock(now):
            services.mark_started(record.celery_id, name=name, worker="w@test")
        now += timedelta(seconds=runtime)
        if outcome == "retried":
            with clock(now):
                services.mark_retry(record.celery_id, error="again", eta=None)
                now += timedelta(seconds=wait)
            with clock(now):
                services.mark_started(record.celery_id, name=name, worker="w@test")
                now += timedelta(seconds=runtime)
            outcome = "succeeded"
        with clock(now):
            if outcome == "succeeded":
                services.mark_succeeded(record.celery_id)
            elif outcome == "failed":
                services.mark_failed(record.celery_id, error="ValueError('boom')")
            elif outcome == "lost":
                record.refresh_from_db()
                services.mark_lost(record, reason="worker gone")
            elif outcome != "started":
                raise ValueError(outcome)
    record.refresh_from_db()
    return record
