"""tasks_app.live without a server: what the ledger publishes, how the hub hands
items out, and what a task stream reads from the database."""

from __future__ import annotations

import json
import time

import pytest
import redis
from django.db.models import Q

from tasks_app import ledger_writes, live, services
from tasks_app.models import TaskEvent, TaskRecord

pytestmark = pytest.mark.django_db
State = TaskRecord.State


def record(owner=None, **fields) -> TaskRecord:
    fields.setdefault("celery_id", f"c-{time.monotonic_ns()}")
    return TaskRecord.objects.create(name="tests.add", owner=owner, **fields)


def events_of(chunks: list[str]) -> list[tuple[str, dict, str | None]]:
    out = []
    for block in chunks:
        fields = dict(line.split(": ", 1) for line in block.strip().split("\n"))
        out.append((fields["event"], json.loads(fields["data"]), fields.get("id")))
    return out


def test_a_committed_transition_rings_with_its_record_owner_and_tree(
    alice, settings, django_capture_on_commit_callbacks
):
    settings.CLAW_LIVE_REDIS_URL = settings.CELERY_BROKER_URL
    live._client.cache_clear()
    live.channel.cache_clear()
    root = record(alice)
    child = record(alice, root=root, parent=root, state=State.STARTED)
    pubsub = redis.Redis.from_url(settings.CELERY_BROKER_URL).pubsub()
    pubsub.subscribe(live.channel())
    try:
        pubsub.get_message(timeout=1)  # the subscription's confirmation
        live._listeners = (float("-inf"), False)  # count the subscribers afresh
        with django_capture_on_commit_callbacks(execute=True):
            assert services.record_progress(child.celery_id, 1, 2, "half")
        message = pubsub.get_message(timeout=2)
    finally:
        pubsub.close()
        live._client.cache_clear()
        live.channel.cache_clear()
    item = json.loads(message["data"])
    assert item == {"k": "task", "r": child.pk, "u": alice.pk, "t": [root.pk]}
    assert set(live.topics_of(item)) == {
        ("task", child.pk),
        ("root", root.pk),
        ("user", alice.pk),
        ("all",),
    }


def test_no_doorbell_rings_while_no_streams_process_listens(
    settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.CLAW_LIVE_REDIS_URL = settings.CELERY_BROKER_URL
    live._client.cache_clear()
    monkeypatch.setattr(live, "_listeners", (float("-inf"), False))
    # a channel nobody subscribes to (this session's streams server listens on
    # the real one)
    monkeypatch.setattr(live, "channel", lambda: f"claw:live:nobody-{time.time()}")
    monkeypatch.setattr(live, "_send", lambda *a: pytest.fail("published"))
    try:
        with django_capture_on_commit_callbacks(execute=True):
            ledger_writes.add_event(record().celery_id, TaskEvent.Kind.PROGRESS, {})
        assert live._listeners[1] is False  # asked Redis: nobody subscribed
    finally:
        live._client.cache_clear()


def test_nothing_is_published_without_redis(settings, monkeypatch):
    settings.CLAW_LIVE_REDIS_URL = ""
    monkeypatch.setattr(live, "_send", lambda *a: pytest.fail("published"))
    ledger_writes.add_event(record().celery_id, TaskEvent.Kind.PROGRESS, {})


def test_the_hub_hands_an_item_to_each_follower_of_its_topics_once(settings):
    settings.CLAW_LIVE_REDIS_URL = ""  # no subscription started: dispatch alone
    hub = live.Hub()
    mine, staff, other = (
        hub.follow([("user", 1), ("task", 5)]),
        hub.follow([("all",)]),
        hub.follow([("user", 2)]),
    )
    hub.dispatch({"k": "task", "r": 5, "u": 1, "t": []})
    assert len(mine.items) == 1 and len(staff.items) == 1 and other.items == []
    hub.unfollow(mine)
    hub.dispatch({"k": "task", "r": 5, "u": 1, "t": []})
    assert len(mine.items) == 1 and len(staff.items) == 2


def test_a_job_stream_carries_its_sections_and_ends_with_its_task(alice):
    root = record(alice, state=State.STARTED)
    section = record(alice, root=root, parent=root)
    stranger = record(alice)
    for r in (root, section, stranger):
        services._add_event(r.celery_id, TaskEvent.Kind.QUEUED, {})
    services._add_event(section.celery_id, TaskEvent.Kind.PROGRESS, {"current": 1})
    source = live.tree_source(root, None, job_id="plan")
    first = events_of(source._catch_up())
    assert [(e, d["task_id"]) for e, d, _ in first] == [
        ("task_queued", root.pk),
        ("task_queued", section.pk),
        ("task_progress", section.pk),
    ]
    assert all(d["job_id"] == "plan" for _, d, _ in first)
    assert not source.finished
    TaskRecord.objects.filter(pk=root.pk).update(state=State.SUCCESS)
    services._add_event(root.celery_id, TaskEvent.Kind.SUCCEEDED, {})
    last = events_of(source._catch_up())
    assert [e for e, _, _ in last] == ["task_completed"] and source.finished


def test_an_event_committed_after_a_later_one_is_sent_once_without_an_id(alice):
    task = record(alice)

    def event(pk: int) -> TaskEvent:
        return TaskEvent.objects.create(
            id=pk, record=task, kind=TaskEvent.Kind.PROGRESS, data={"current": pk}
        )

    base = TaskEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    event(base + 12)
    source = live.TaskSource(records=Q(pk=task.pk), topics=[], after=base)
    assert [i for *_, i in events_of(source._catch_up())] == [str(base + 12)]
    event(base + 11)  # its id was taken before 12's, its commit came after
    late = events_of(source._catch_up())
    assert [(d["data"]["current"], i) for _, d, i in late] == [(base + 11, None)]
    assert source._catch_up() == []  # once
