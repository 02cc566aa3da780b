"""The conversations domain's collector on /metrics: tokens and reply times per
model, from the rollups the fold adds the finished replies to (never from the
messages at scrape time); each reply counted once whatever the fold goes
through."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from claw.metrics import WATERMARK
from claw.models import Conversation, LlmRollup, Message
from tasks_app import rollups
from tasks_app.models import RollupWatermark
from tests.harness import kill_fold_midway

pytestmark = pytest.mark.django_db
TOKENS = "claw_llm_tokens_total"
REPLY = "claw_llm_reply_seconds"


def scrape() -> dict[tuple, float]:
    body = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken")
    assert body.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.content.decode())
        for s in family.samples
    }


def prompt_tokens(samples: dict, model: str = "small") -> float | None:
    return samples.get((TOKENS, (("kind", "prompt"), ("model", model))))


def reply(conversation, model="small", prompt=10, completion=5, ms=100, **fields):
    return Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_ms=ms,
        **fields,
    )


def test_llm_tokens_and_reply_seconds_per_model(alice, settings):
    settings.METRICS_TOKEN = "t0ken"
    conversation = Conversation.objects.create(owner=alice)
    for model, prompt, completion, ms in (
        ("small", 100, 20, 300),
        ("small", 50, 10, 4000),
        ("big", 7, 3, None),
    ):
        reply(conversation, model, prompt, completion, ms)
    Message.objects.create(conversation=conversation, role=Message.Role.USER)
    rollups.fold()

    samples = scrape()
    tokens = "claw_llm_tokens_total"
    assert samples[(tokens, (("kind", "prompt"), ("model", "small")))] == 150
    assert samples[(tokens, (("kind", "completion"), ("model", "small")))] == 30
    assert samples[(tokens, (("kind", "prompt"), ("model", "big")))] == 7
    seconds = "claw_llm_reply_seconds"
    assert samples[(seconds + "_count", (("model", "small"),))] == 2
    assert samples[(seconds + "_sum", (("model", "small"),))] == pytest.approx(4.3)
    assert samples[(seconds + "_bucket", (("le", "0.5"), ("model", "small")))] == 1
    assert samples[(seconds + "_bucket", (("le", "5.0"), ("model", "small")))] == 2
    assert (seconds + "_count", (("model", "big"),)) not in samples  # never timed


def test_a_scrape_reads_the_rollups_not_the_messages(alice, settings):
    settings.METRICS_TOKEN = "t0ken"
    conversation = Conversation.objects.create(owner=alice)
    reply(conversation)
    rollups.fold()

    with CaptureQueriesContext(connection) as queries:
        samples = scrape()

    assert prompt_tokens(samples) == 10
    table = Message._meta.db_table
    touching = [q["sql"] for q in queries if table in q["sql"]]
    assert touching == []


def test_a_reply_is_counted_when_it_finishes_and_once(alice, settings):
    """A reply is inserted pending and finished later: the fold that passes its
    id before it ends reads it again until it does, and counts it once."""
    settings.METRICS_TOKEN = "t0ken"
    conversation = Conversation.objects.create(owner=alice)
    pending = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.PENDING,
    )
    reply(conversation, prompt=7)  # a later id, finished first
    rollups.fold()
    assert prompt_tokens(scrape()) == 7
    assert str(pending.pk) in RollupWatermark.objects.get(pk=WATERMARK).gaps

    Message.objects.filter(pk=pending.pk).update(
        status=Message.Status.DONE, model="small", prompt_tokens=100, latency_ms=2000
    )
    rollups.fold()
    rollups.fold()

    samples = scrape()
    assert prompt_tokens(samples) == 107
    assert samples[(REPLY + "_count", (("model", "small"),))] == 2
    assert RollupWatermark.objects.get(pk=WATERMARK).gaps == {}


def test_a_failed_reply_without_a_model_counts_nothing(alice):
    conversation = Conversation.objects.create(owner=alice)
    reply(conversation, model="", status=Message.Status.FAILED)
    rollups.fold()
    assert not LlmRollup.objects.exists()
    assert RollupWatermark.objects.get(pk=WATERMARK).gaps == {}


@pytest.mark.django_db(transaction=True)
def test_a_fold_killed_before_commit_leaves_nothing_and_the_next_counts_once(
    alice, worker_env, settings
):
    settings.METRICS_TOKEN = "t0ken"
    conversation = Conversation.objects.create(owner=alice)
    reply(conversation, prompt=10)
    reply(conversation, prompt=20)
    kill_fold_midway(worker_env, "claw.LlmRollup", WATERMARK)
    assert not LlmRollup.objects.exists()
    assert RollupWatermark.objects.get(pk=WATERMARK).last_id == 0

    rollups.fold()
    reply(conversation, prompt=5)  # after the recovery fold: the next one counts it
    rollups.fold()
    rollups.fold()

    assert prompt_tokens(scrape()) == 35


@pytest.mark.django_db(transaction=True)
def test_a_reply_that_commits_after_a_later_one_was_folded_is_counted_once(
    alice, settings
):
    """Ids are taken at INSERT but commit in any order: the fold that steps over
    an uncommitted reply looks for it again, and counts it when it appears."""
    settings.METRICS_TOKEN = "t0ken"
    conversation = Conversation.objects.create(owner=alice)
    reply(conversation, prompt=1)
    rollups.fold()  # past the first fold: later skipped ids are remembered
    inserted, release = threading.Event(), threading.Event()

    def slow_transaction():
        with transaction.atomic():
            reply(conversation, prompt=100)  # takes the lower id
            inserted.set()
            release.wait(20)
        connection.close()

    thread = threading.Thread(target=slow_transaction)
    thread.start()
    assert inserted.wait(20)
    reply(conversation, prompt=10)  # a higher id, committed first
    rollups.fold()
    assert prompt_tokens(scrape()) == 11
    assert RollupWatermark.objects.get(pk=WATERMARK).gaps
    release.set()
    thread.join(20)

    rollups.fold()
    rollups.fold()

    assert prompt_tokens(scrape()) == 111
    assert RollupWatermark.objects.get(pk=WATERMARK).gaps == {}


def test_a_reply_pending_past_the_gap_grace_is_still_counted(alice, settings):
    """The grace gives up ids that never appear, not replies that take long."""
    settings.METRICS_TOKEN = "t0ken"
    settings.CLAW_ROLLUP_GAP_SECONDS = 5
    conversation = Conversation.objects.create(owner=alice)
    pending = reply(conversation, prompt=40, status=Message.Status.GENERATING)
    reply(conversation, prompt=2)
    rollups.fold()
    mark = RollupWatermark.objects.get(pk=WATERMARK)
    mark.gaps = {str(pending.pk): (timezone.now() - timedelta(minutes=5)).timestamp()}
    mark.save()
    rollups.fold()  # still generating: kept, though first seen long ago

    Message.objects.filter(pk=pending.pk).update(status=Message.Status.DONE)
    rollups.fold()

    assert prompt_tokens(scrape()) == 42
