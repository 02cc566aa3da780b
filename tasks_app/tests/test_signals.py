"""The publish-signal path (records for messages not sent by submit), the
LedgerTask refusal and the result backend's skip of a refused STARTED write,
without a worker."""

from __future__ import annotations

import uuid
from datetime import timedelta
from unittest import mock

import pytest
from celery.app.task import Context
from celery.exceptions import Ignore
from django.utils import timezone
from django_celery_results.models import TaskResult

from claw.celery import app
from tasks_app import services
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
        from tasks_app.signals import on_task_prerun

        task.push_request(id="abc", hostname="w1")
        try:
            on_task_prerun("abc", task)
            assert task.request.claw_refusal is None
        finally:
            task.pop_request()
    started.assert_called_once_with("abc", name="tests.add", worker="w1")


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
