"""The publish-signal path (records for messages not sent by submit), the
LedgerTask refusal and the result backend's skip of a refused STARTED write,
without a worker."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from unittest import mock

import pytest
from celery.app.task import Context
from celery.exceptions import Ignore
from django.utils import timezone
from django_celery_results.models import TaskResult

from claw.celery import app
from tasks_app import leases, services
from tasks_app.models import TaskRecord

State = TaskRecord.State
pytestmark = pytest.mark.django_db


def publish_headers(**headers) -> dict:
    return {"id": str(uuid.uuid4()), "task": "tests.add", **headers}


def test_a_message_published_outside_submit_gets_a_redacted_linked_record():
    parent = publish_headers()
    services.record_published(parent, ([1, 2], {}, {}), "default", {"priority": 9})
    child = publish_headers(
        parent_id=parent["id"],
        root_id=parent["id"],
        group="g-1",
        periodic_task_name="every minute",
    )
    body = ([3], {"token": "t", "x": 1}, {})

    services.record_published(child, body, "default", {"priority": 0})

    record = TaskRecord.objects.get(celery_id=child["id"])
    parent_record = TaskRecord.objects.get(celery_id=parent["id"])
    assert record.state == State.PENDING
    assert record.parent_id == parent_record.pk
    assert record.root_id == parent_record.pk
    assert record.group_id == "g-1"
    assert record.options == {"periodic_task_name": "every minute"}
    assert record.kwargs == {"token": "[redacted]", "x": 1}
    assert record.priority == 9  # Redis 0 is our highest
    assert parent_record.priority == 0
    assert list(record.events.values_list("kind", flat=True)) == ["queued"]


def test_a_target_header_links_a_canvas_published_record_to_its_object():
    owner_record = services.submit("tests.add", args=[1, 2])
    linked = publish_headers(**services.target_header(owner_record))
    garbled = publish_headers(claw_target="no-such.model:x")

    services.record_published(linked, ([], {}, {}), "default", {})
    services.record_published(garbled, ([], {}, {}), "default", {})

    assert TaskRecord.objects.get(celery_id=linked["id"]).target == owner_record
    assert TaskRecord.objects.get(celery_id=garbled["id"]).target is None


def test_a_message_published_by_submit_or_twice_gets_no_second_record():
    headers = publish_headers()
    services.record_published(headers, ([], {}, {}), "default", {})
    services.record_published(headers, ([], {}, {}), "default", {})
    services.record_published(
        publish_headers(claw_record=123), ([], {}, {}), "default", {}
    )

    assert TaskRecord.objects.count() == 1
    assert TaskRecord.objects.get().events.count() == 1


def test_a_celery_retry_republish_marks_the_running_record_retry():
    headers = publish_headers()
    services.record_published(headers, ([], {}, {}), "default", {})
    services.mark_started(headers["id"], name="tests.add", worker="w1")
    eta = timezone.now() + timedelta(seconds=5)

    services.record_published(
        {**headers, "retries": 1, "eta": eta.isoformat()}, ([], {}, {}), "default", {}
    )

    record = TaskRecord.objects.get(celery_id=headers["id"])
    assert record.state == State.RETRY
    assert record.eta == eta
    assert TaskRecord.objects.count() == 1


def test_a_refused_delivery_is_ignored_and_a_cancelled_one_stores_revoked():
    task = app.tasks["tests.add"]
    task_id = str(uuid.uuid4())
    task.push_request(id=task_id, claw_refusal="cancelled")
    try:
        with pytest.raises(Ignore):
            task.before_start(task_id, (1, 1), {})
    finally:
        task.pop_request()

    assert TaskResult.objects.get(task_id=task_id).status == "REVOKED"

    other_id = str(uuid.uuid4())
    task.push_request(id=other_id, claw_refusal="finished")
    try:
        with pytest.raises(Ignore):
            task.before_start(other_id, (1, 1), {})
    finally:
        task.pop_request()
    assert not TaskResult.objects.filter(task_id=other_id).exists()


def test_a_refused_redelivery_does_not_overwrite_the_stored_result():
    backend = app.backend
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, 42, "SUCCESS", request=Context(id=task_id))

    refused = Context(id=task_id, claw_refusal="finished")
    backend.store_result(task_id, {"pid": 1}, "STARTED", request=refused)

    stored = TaskResult.objects.get(task_id=task_id)
    assert stored.status == "SUCCESS"
    assert stored.result == "42"


def test_an_accepted_delivery_runs_with_no_refusal():
    task = app.tasks["tests.add"]
    task.push_request(id=str(uuid.uuid4()))
    try:
        task.before_start("x", (1, 1), {})  # no refusal: no exception
    finally:
        task.pop_request()
    with mock.patch.object(services, "mark_started", return_value=None) as started:
        from tasks_app.signals import on_task_postrun, on_task_prerun

        task.push_request(id="abc", hostname="w1")
        try:
            on_task_prerun("abc", task)
            assert task.request.claw_refusal is None
            assert leases.held() == {"abc": task.request.claw_runner}
            on_task_postrun(task_id="abc", task=task, state="SUCCESS")
            assert leases.held() == {}  # the run's lease is no longer renewed
        finally:
            task.pop_request()
    started.assert_called_once_with(
        "abc",
        name="tests.add",
        worker="w1",
        runner=mock.ANY,
        record_id=None,
    )
    assert started.call_args.kwargs["runner"].startswith(f"w1:{os.getpid()}:")


def test_a_poisoned_delivery_stores_failure_over_the_stale_started_result():
    task = app.tasks["tests.kill_self"]
    task_id = str(uuid.uuid4())
    app.backend.store_result(
        task_id, {"pid": 1}, "STARTED", request=Context(id=task_id)
    )
    task.push_request(id=task_id, claw_refusal="poisoned")
    try:
        with pytest.raises(Ignore):
            task.before_start(task_id, (), {})
    finally:
        task.pop_request()

    stored = TaskResult.objects.get(task_id=task_id)
    assert stored.status == "FAILURE"
    assert "PoisonedTask" in stored.result


def started_record(task_id: str) -> TaskRecord:
    services.record_published(
        {"id": task_id, "task": "tests.add"}, ([1, 2], {}, {}), "default", {}
    )
    services.mark_started(task_id, name="tests.add", worker="w1")
    return TaskRecord.objects.get(celery_id=task_id)


def test_storing_success_moves_the_ledger_and_the_result_in_one_statement(
    django_assert_num_queries,
):
    task_id = str(uuid.uuid4())
    record = started_record(task_id)
    request = Context(id=task_id, task="tests.add", args=[1, 2], kwargs={})

    with django_assert_num_queries(1) as queries:
        app.backend.store_result(task_id, 3, "SUCCESS", request=request)

    (sql,) = [q["sql"] for q in queries.captured_queries]
    assert sql.startswith('WITH moved AS (UPDATE "tasks_app_taskrecord"')
    assert 'INSERT INTO "tasks_app_taskevent"' in sql
    assert 'INSERT INTO "django_celery_results_taskresult"' in sql
    record.refresh_from_db()
    assert record.state == State.SUCCESS
    assert list(record.events.values_list("kind", flat=True)) == [
        "queued",
        "started",
        "succeeded",
    ]
    stored = TaskResult.objects.get(task_id=task_id)
    assert (stored.status, stored.result, stored.task_name) == (
        "SUCCESS",
        "3",
        "tests.add",
    )
    assert stored.date_started == record.started_at
    assert request.claw_succeeded  # the task_success receiver has nothing to do


def test_started_is_not_stored_but_async_result_reads_it_from_the_ledger(
    django_assert_num_queries,
):
    task_id = str(uuid.uuid4())
    started_record(task_id)

    with django_assert_num_queries(0):
        app.backend.store_result(task_id, {"pid": 1}, "STARTED", request=None)

    assert not TaskResult.objects.filter(task_id=task_id).exists()
    assert app.AsyncResult(task_id).state == "STARTED"
    assert app.AsyncResult(str(uuid.uuid4())).state == "PENDING"


def test_a_late_success_of_a_cancelled_task_stores_the_result_but_keeps_revoked():
    task_id = str(uuid.uuid4())
    record = started_record(task_id)
    services.cancel(record)  # running: flagged, revoke broadcast after commit

    app.backend.store_result(task_id, 3, "SUCCESS", request=Context(id=task_id))

    record.refresh_from_db()
    assert record.state == State.REVOKED
    assert TaskResult.objects.get(task_id=task_id).status == "SUCCESS"


def test_storing_a_result_twice_updates_the_row_and_keeps_its_creation_time():
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, "first", "RETRY", request=Context(id=task_id))
    created = TaskResult.objects.get(task_id=task_id).date_created

    app.backend.store_result(task_id, "second", "FAILURE", request=Context(id=task_id))

    stored = TaskResult.objects.get(task_id=task_id)
    assert (stored.status, stored.result) == ("FAILURE", '"second"')
    assert stored.date_created == created


@pytest.mark.parametrize(("state", "released"), [("IGNORED", True), ("SUCCESS", False)])
def test_a_run_that_ends_with_its_record_still_started_releases_its_lease(
    state, released
):
    # Task.replace (a fan-out) and a requeueing Reject end the run while the
    # record stays STARTED: the next delivery of the id must not be refused.
    from tasks_app.signals import on_task_postrun

    task_id = str(uuid.uuid4())
    started_record(task_id)
    TaskRecord.objects.filter(celery_id=task_id).update(runner="w1:7:abc")
    task = app.tasks["tests.add"]
    task.push_request(id=task_id, claw_runner="w1:7:abc")
    try:
        with mock.patch("tasks_app.connections.recycle"):  # the test's connection
            on_task_postrun(task_id=task_id, task=task, state=state)
    finally:
        task.pop_request()

    record = TaskRecord.objects.get(celery_id=task_id)
    assert (record.lease_until is None) is released
