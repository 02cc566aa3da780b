"""The reply task's own hooks and backoff (the runs themselves: test_reply_worker)."""

from __future__ import annotations

import pytest
from celery.exceptions import Ignore

from claw import conversations
from claw.llm import LLMRejected
from claw.models import Message
from claw.tasks import backoff, generate_ai_response

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
def test_a_delivery_the_ledger_refuses_fails_its_reply(reply, refusal):
    # a reply cancelled while queued: no body will ever run to mark it
    generate_ai_response.push_request(claw_refusal=refusal, id="x")
    try:
        with pytest.raises(Ignore):
            generate_ai_response.before_start("x", (reply.pk,), {})
    finally:
        generate_ai_response.pop_request()

    message = Message.objects.get(pk=reply.pk)
    assert (message.status, message.error) == (
        "failed",
        f"Not generated: task {refusal}.",
    )


def test_a_run_that_fails_marks_its_reply_failed_with_the_error(reply):
    exc = LLMRejected("LLM provider answered 400: bad request")

    generate_ai_response.on_failure(exc, "x", (reply.pk,), {}, None)

    message = Message.objects.get(pk=reply.pk)
    assert message.status == "failed"
    assert message.error == "LLMRejected: LLM provider answered 400: bad request"
