"""The reply task's lifecycle handler and backoff (the runs themselves:
test_reply_worker). The handler is driven through the ledger's transitions, as a
worker's signal receivers drive it."""

from __future__ import annotations

import pytest

from claw import conversations
from claw.llm import LLMRejected
from claw.models import Message
from claw.tasks import backoff
from tasks_app import services
from tasks_app.models import TaskRecord

pytestmark = pytest.mark.django_db


@pytest.fixture
def reply(alice, no_publish):
    conversation = conversations.create_conversation(alice)
    return conversations.post_message(conversation, "q").assistant_message


def test_backoff_grows_exponentially_with_jitter_up_to_its_maximum(settings):
    settings.AI_RETRY_BACKOFF, settings.AI_RETRY_BACKOFF_MAX = 2, 10
    for failures, (low, high) in enumerate([(1, 2), (2, 4), (4, 8), (5, 10), (5, 10)]):
        delays = {backoff(failures) for _ in range(50)}
        assert all(low <= d <= high for d in delays) and len(delays) > 1


@pytest.mark.parametrize("refusal", ["cancelled", "poisoned"])
def test_a_delivery_the_ledger_refuses_fails_its_reply(
    reply, refusal, django_capture_on_commit_callbacks
):
    # a reply cancelled while queued: no body will ever run to mark it
    record = TaskRecord.objects.get(pk=reply.task_id)
    if refusal == "cancelled":
        TaskRecord.objects.filter(pk=record.pk).update(cancel_requested=True)
    else:  # its worker process died on every delivery
        TaskRecord.objects.filter(pk=record.pk).update(deliveries=99)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.mark_started(
            record.celery_id, name=record.name, worker="w"
        ) == (refusal)

    message = Message.objects.get(pk=reply.pk)
    assert (message.status, message.error) == (
        "failed",
        f"Not generated: task {refusal}.",
    )


def test_a_run_that_fails_marks_its_reply_failed_with_the_error(
    reply, django_capture_on_commit_callbacks
):
    exc = LLMRejected("LLM provider answered 400: bad request")
    record = TaskRecord.objects.get(pk=reply.task_id)
    services.mark_started(record.celery_id, name=record.name, worker="w")

    with django_capture_on_commit_callbacks(execute=True):
        services.mark_failed(record.celery_id, error=repr(exc), exc=exc)

    message = Message.objects.get(pk=reply.pk)
    assert message.status == "failed"
    assert message.error == "LLMRejected: LLM provider answered 400: bad request"
