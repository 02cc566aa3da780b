"""STARTED written late (tasks_app.starts) with a real worker on PostgreSQL + Redis.

A short run's STARTED is written by its SUCCESS statement; a long run's by the
pool process once it is older than CLAW_STARTED_AFTER_SECONDS. The ledger's
refusals still hold before a run starts. Late starts are opt-in (the default 0
writes STARTED first), so this module runs its own worker with 0.5 s on a queue
of its own.
"""

from __future__ import annotations

import pytest
from celery.result import AsyncResult
from django.db import transaction
from django_celery_results.models import TaskResult

from claw.celery import app
from tasks_app import broker_inspect, services
from tasks_app.models import TaskEvent, TaskRecord
from tests.harness import CeleryProcess, wait_final, wait_for
from tests.tasks import EFFECTS_KEY, redis_client

pytestmark = [pytest.mark.worker]
State = TaskRecord.State
QUEUE = "started_late"


@pytest.fixture(scope="module")
def late_worker(worker_env, artifacts_dir):
    env = {**worker_env, "CLAW_STARTED_AFTER_SECONDS": "0.5"}
    worker = CeleryProcess(
        "worker", env, ["-Q", QUEUE, "-c", "2"], artifacts_dir / "worker-late.log"
    )
    with worker.running(app):
        yield worker


def submit(name: str, args: list) -> TaskRecord:
    return services.submit(name, args=args, queue=QUEUE)


def timeline(record: TaskRecord) -> list[TaskEvent]:
    return list(record.events.order_by("id"))


def effect_count(key: str) -> int:
    return int(redis_client().hget(EFFECTS_KEY, key) or 0)


def test_a_short_task_commits_started_with_its_success(transactional_db, late_worker):
    record = wait_final(submit("tests.effect", ["short-run"]))

    events = timeline(record)
    assert [e.kind for e in events] == ["queued", "started", "succeeded"]
    queued, started, succeeded = events
    assert record.state == State.SUCCESS
    assert (record.attempts, record.deliveries) == (1, 1)
    assert record.worker and record.runner.startswith(record.worker + ":")
    assert record.lease_until is None
    # the run's own start, not the time of the statement that wrote it
    assert queued.at <= record.started_at == started.at <= succeeded.at
    assert record.started_at <= record.finished_at
    assert started.attempt == succeeded.attempt == 1
    assert started.celery_id == record.celery_id
    assert started.worker == record.worker
    result = TaskResult.objects.get(task_id=record.celery_id)
    assert result.status == "SUCCESS"
    assert result.date_started == record.started_at
    assert effect_count("short-run") == 1


def test_a_long_task_shows_started_with_its_lease_while_it_runs(
    transactional_db, late_worker
):
    record = submit("tests.sleep", [4])

    def running():
        record.refresh_from_db()
        return record.state == State.STARTED

    wait_for(running, 20, interval=0.1, message="STARTED while it runs")
    assert record.lease_until is not None and record.runner
    assert record.attempts == 1 and record.started_at is not None
    assert AsyncResult(record.celery_id, app=app).state == "STARTED"
    assert [e.kind for e in timeline(record)] == ["queued", "started"]

    wait_final(record)
    events = timeline(record)
    assert [e.kind for e in events] == ["queued", "started", "succeeded"]
    assert record.state == State.SUCCESS
    assert (record.attempts, record.deliveries) == (1, 1)
    assert events[1].at == record.started_at
    # written about CLAW_STARTED_AFTER_SECONDS into a 4 s run
    assert (record.finished_at - record.started_at).total_seconds() >= 3.9


def test_a_cancelled_record_never_starts(transactional_db, late_worker):
    key = "cancelled-before-delivery"
    with transaction.atomic():
        # Published after commit, by when the record is REVOKED: the worker gets
        # the message and must refuse it from its one read.
        record = submit("tests.effect", [key])
        services.cancel(record)

    wait_for(
        lambda: TaskResult.objects.filter(
            task_id=record.celery_id, status="REVOKED"
        ).exists(),
        20,
        message="the refused delivery",
    )
    record.refresh_from_db()
    assert record.state == State.REVOKED
    assert [e.kind for e in timeline(record)] == ["queued", "cancelled"]
    assert record.attempts == 0 and record.started_at is None
    assert effect_count(key) == 0


def test_a_redelivery_of_a_finished_attempt_is_refused(transactional_db, late_worker):
    key = "finished-redelivered"
    record = wait_final(submit("tests.effect", [key]))
    before = [(e.kind, e.at) for e in timeline(record)]

    # The same attempt's message again, as Redis hands back an unacknowledged one.
    app.send_task("tests.effect", args=[key], task_id=record.celery_id, queue=QUEUE)
    wait_for(
        lambda: _acknowledged(record.celery_id),
        20,
        interval=0.1,
        message="the redelivery to be taken and acknowledged",
    )
    wait_for(lambda: not _active(record.celery_id), 10, message="it to settle")

    record.refresh_from_db()
    assert effect_count(key) == 1
    assert record.state == State.SUCCESS
    assert (record.attempts, record.deliveries) == (1, 1)
    assert [(e.kind, e.at) for e in timeline(record)] == before


def _acknowledged(celery_id: str) -> bool:
    held = broker_inspect.queued_task_ids([QUEUE])  # queued or reserved
    return held is not None and celery_id not in held


def _active(celery_id: str) -> bool:
    active = app.control.inspect(timeout=1).active() or {}
    return any(t["id"] == celery_id for tasks in active.values() for t in tasks)
