"""Every lifecycle path with a real worker on PostgreSQL + Redis.

Eager mode and patched sends skip the publish and worker signals and the
acknowledgements this platform is about, so these run the real thing.
"""

from __future__ import annotations

import json

import pytest
from celery import chord, group
from django_celery_results.models import TaskResult

from claw.celery import app
from tasks_app import services
from tasks_app.models import TaskRecord
from tests.harness import wait_final, wait_for
from tests.tasks import EFFECTS_KEY, redis_client

pytestmark = [pytest.mark.worker]
State = TaskRecord.State


def kinds(record: TaskRecord) -> list[str]:
    return list(record.events.values_list("kind", flat=True))


def test_failure_after_automatic_retries_keeps_every_retry_in_the_timeline(
    transactional_db, celery_worker
):
    record = wait_final(services.submit("tests.always_flaky"))

    assert record.state == State.FAILURE
    assert "transient failure" in record.error
    assert "Flaky" in record.traceback
    assert record.attempts == 3  # the first run and two automatic retries
    assert kinds(record) == [
        "queued",
        "started",
        "retry",
        "started",
        "retry",
        "started",
        "failed",
    ]


def test_cancel_while_queued_never_runs(transactional_db, celery_worker):
    key = "cancel-queued"
    record = services.submit("tests.effect", args=[key], countdown=3600)

    services.cancel(record)

    record.refresh_from_db()
    assert record.state == State.REVOKED
    assert record.cancel_requested
    assert kinds(record) == ["queued", "cancelled"]
    assert redis_client().hget(EFFECTS_KEY, key) is None


def test_cancel_while_running_stops_it_and_a_late_success_cannot_overwrite(
    transactional_db, celery_worker
):
    record = services.submit("tests.progress_loop", args=[200, 0.05])

    def running():
        record.refresh_from_db()
        return record.state == State.STARTED and record.progress_current > 0

    wait_for(running, 20, message="progress")
    services.cancel(record)
    wait_final(record, timeout=10)

    assert record.state == State.REVOKED
    assert record.progress_current < 200
    assert "cancelled" in kinds(record)
    assert "succeeded" not in kinds(record)
    wait_for(
        lambda: TaskResult.objects.filter(
            task_id=record.celery_id, status="REVOKED"
        ).exists(),
        10,
        message="the stored result to show REVOKED",
    )


def test_manual_retry_starts_a_new_attempt_and_keeps_the_old_one(
    transactional_db, celery_worker
):
    record = wait_final(services.submit("tests.fail", args=["first"]))
    assert record.state == State.FAILURE
    first_attempt = record.celery_id

    services.retry(record, args=["second"])  # edit and retry
    wait_final(record)

    assert record.celery_id != first_attempt
    assert record.state == State.FAILURE
    assert "second" in record.error
    assert record.attempts == 2
    assert TaskResult.objects.filter(task_id=first_attempt, status="FAILURE").exists()
    assert TaskResult.objects.filter(task_id=record.celery_id).exists()
    assert kinds(record) == [
        "queued",
        "started",
        "failed",
        "queued",
        "started",
        "failed",
    ]


def test_group_and_chord_members_and_callback_get_records(
    transactional_db, celery_worker
):
    # Published with plain canvas calls, not submit(): the publish signal records them.
    header = [app.signature("tests.add", args=(i, i)) for i in range(3)]
    result = chord(header)(app.signature("tests.total", kwargs={"extra": 100}))
    group_result = group(app.signature("tests.add", args=(1, 1)) for _ in range(2))()

    def callback_done():
        return TaskRecord.objects.filter(
            celery_id=result.id, state=State.SUCCESS
        ).exists()

    wait_for(callback_done, 30, message="chord callback")
    members = TaskRecord.objects.filter(name="tests.add").exclude(celery_id=result.id)
    wait_for(
        lambda: members.filter(state=State.SUCCESS).count() == 5, 30, message="members"
    )
    chord_members = members.exclude(group_id="").exclude(group_id=group_result.id)
    assert chord_members.count() == 3
    assert members.filter(group_id=group_result.id).count() == 2
    callback = TaskRecord.objects.get(celery_id=result.id)
    # The callback is published by the worker that ran the last member (the
    # publish signal there records it), so it links to that member.
    assert callback.parent_id in {member.pk for member in chord_members}
    assert callback.root_id is not None
    assert {member.group_id for member in chord_members} == {callback.group_id}
    stored = TaskResult.objects.get(task_id=result.id)
    assert json.loads(stored.result) == (0 + 2 + 4) + 100
    assert callback.state == State.SUCCESS


def test_plain_delay_gets_a_record_from_the_publish_signal(
    transactional_db, celery_worker
):
    result = app.send_task("tests.add", args=[20, 22])

    record = wait_final(
        wait_for(
            lambda: TaskRecord.objects.filter(celery_id=result.id).first(),
            10,
            message="record",
        )
    )
    assert record.state == State.SUCCESS
    assert record.args == [20, 22]
    assert record.queue == "default"
    assert json.loads(TaskResult.objects.get(task_id=result.id).result) == 42


def test_a_periodic_run_is_recorded_with_its_schedule_name(
    transactional_db, celery_worker, start_beat
):
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every, _ = IntervalSchedule.objects.get_or_create(
        every=1, period=IntervalSchedule.SECONDS
    )
    PeriodicTask.objects.create(
        name="lifecycle: add every second",
        task="tests.add",
        args="[1, 2]",
        interval=every,
    )
    start_beat()

    def periodic_success():
        return TaskRecord.objects.filter(
            name="tests.add",
            state=State.SUCCESS,
            options__periodic_task_name="lifecycle: add every second",
        ).first()

    record = wait_for(periodic_success, 45, interval=0.5, message="a periodic run")
    assert record.args == [1, 2]


def test_a_submitted_task_succeeds_with_its_result_and_a_full_timeline(
    transactional_db, celery_worker
):
    record = wait_final(services.submit("tests.add", args=[2, 40]))

    assert record.state == State.SUCCESS
    assert record.attempts == 1
    assert record.worker == celery_worker.hostname
    assert record.started_at and record.finished_at
    assert kinds(record) == ["queued", "started", "succeeded"]
    assert json.loads(TaskResult.objects.get(task_id=record.celery_id).result) == 42


def test_a_redelivered_message_of_a_finished_task_neither_reruns_nor_clobbers_it(
    transactional_db, celery_worker
):
    key = "redelivered-finished"
    record = wait_final(services.submit("tests.effect", args=[key]))
    assert record.state == State.SUCCESS

    # The same attempt again, as a broker redelivery would hand it over.
    app.send_task(
        "tests.effect",
        args=[key],
        task_id=record.celery_id,
        headers={"claw_record": record.pk},
    )
    marker = wait_final(services.submit("tests.add", args=[0, 0]))  # queued behind it

    assert marker.state == State.SUCCESS
    assert int(redis_client().hget(EFFECTS_KEY, key)) == 1
    stored = TaskResult.objects.get(task_id=record.celery_id)
    assert stored.status == "SUCCESS"
    assert json.loads(stored.result) == key
    record.refresh_from_db()
    assert record.state == State.SUCCESS
    assert kinds(record) == ["queued", "started", "succeeded"]


def test_a_task_cancelled_while_every_worker_is_stopped_never_runs_later(
    transactional_db, start_worker
):
    queue = "ledger-offline"
    key = "cancelled-while-down"
    start_worker("-Q", queue, "-c", "1").stop()  # declares the queue, then gone

    record = services.submit("tests.effect", args=[key], queue=queue)
    services.cancel(record)
    record.refresh_from_db()
    assert record.state == State.REVOKED

    # A fresh worker has no in-memory revoke list (no mingle): only the ledger's
    # durable flag can stop it.
    start_worker("-Q", queue, "-c", "1")
    control = services.submit("tests.effect", args=[key + "-control"], queue=queue)
    wait_final(control)

    assert control.state == State.SUCCESS  # the new worker consumes the queue
    assert redis_client().hget(EFFECTS_KEY, key) is None
    record.refresh_from_db()
    assert record.state == State.REVOKED
    assert kinds(record) == ["queued", "cancelled"]
    wait_for(
        lambda: TaskResult.objects.filter(
            task_id=record.celery_id, status="REVOKED"
        ).exists(),
        10,
        message="the refused delivery's result to show REVOKED",
    )
