"""The conversations domain's collector on /metrics: tokens and reply times per
model, read from the assistant messages."""

from __future__ import annotations

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from claw.models import Conversation, Message

pytestmark = pytest.mark.django_db


def test_llm_tokens_and_reply_seconds_per_model(alice, settings):
    settings.METRICS_TOKEN = "t0ken"
    conversation = Conversation.objects.create(owner=alice)
    for model, prompt, completion, ms in (
        ("small", 100, 20, 300),
        ("small", 50, 10, 4000),
        ("big", 7, 3, None),
    ):
        Message.objects.create(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            model=model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=ms,
        )
    Message.objects.create(conversation=conversation, role=Message.Role.USER)

    body = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken")

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.content.decode())
        for s in family.samples
    }
    tokens = "claw_llm_tokens_total"
    assert samples[(tokens, (("kind", "prompt"), ("model", "small")))] == 150
    assert samples[(tokens, (("kind", "completion"), ("model", "small")))] == 30
    assert samples[(tokens, (("kind", "prompt"), ("model", "big")))] == 7
    reply = "claw_llm_reply_seconds"
    assert samples[(reply + "_count", (("model", "small"),))] == 2
    assert samples[(reply + "_sum", (("model", "small"),))] == pytest.approx(4.3)
    assert samples[(reply + "_bucket", (("le", "0.5"), ("model", "small")))] == 1
    assert samples[(reply + "_bucket", (("le", "5.0"), ("model", "small")))] == 2
    assert (reply + "_count", (("model", "big"),)) not in samples  # never timed
