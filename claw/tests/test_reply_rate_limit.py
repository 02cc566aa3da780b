"""The cluster-wide rate limit of claw.generate_ai_response with real workers.

Small windows (a few starts per second or two) keep each test to seconds; the
production default is 10 starts per 60 s (AI_RATE_LIMIT).
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

from claw import conversations
from claw.models import Message
from claw.tests.conftest import ScriptedServer, sse
from tasks_app.models import TaskEvent, TaskRecord
from tests.harness import least_deferrals, wait_for

pytestmark = pytest.mark.worker
QUEUE = "conv_rate"


def ask_many(user, count: int) -> list[Message]:
    conversation = conversations.create_conversation(user)
    return [
        conversations.post_message(
            conversation, f"question {n}", queue=QUEUE
        ).assistant_message
        for n in range(count)
    ]


def wait_all_done(messages: list[Message], timeout: float) -> list[Message]:
    ids = [m.pk for m in messages]

    def done():
        rows = list(Message.objects.filter(pk__in=ids).select_related("task"))
        finished = all(m.status in ("done", "failed") for m in rows)
        return rows if finished else None

    return wait_for(done, timeout, interval=0.2, message="every reply to finish")


def deferrals(record_ids) -> int:
    # a deferral is a retry event whose error is the RateLimited one (icontains:
    # on a JSON key, contains would mean JSON containment)
    return TaskEvent.objects.filter(
        record_id__in=record_ids, kind="retry", data__error__icontains="rate limit"
    ).count()


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_two_workers_together_start_no_more_than_the_limit_per_window(
    transactional_db, start_worker, alice, backend
):
    limit, period = 3, 2.0
    env = {
        "LLM_PROVIDER": "extractive",
        "AI_RATE_LIMIT": f"{limit}/{period:g}",
        "AI_RATE_LIMIT_BACKEND": backend,
    }
    # One reserved message per process, as on ai_high_priority (CLAW_SLOW_QUEUES):
    # this queue is not one, and a worker prefetching 4 would start a reserved
    # reply in a later window without a deferral.
    args = ("-Q", QUEUE, "-c", "2", "--prefetch-multiplier", "1")
    workers = [start_worker(*args, env=env, wait=False) for _ in range(2)]
    from claw.celery import app

    for worker in workers:
        worker.wait_ready(app)
    messages = ask_many(alice, 9)

    rows = wait_all_done(messages, timeout=45)

    # Every start is a reply's started_at: the moment its slot was taken, on
    # the same clock that chose the window.
    per_window = Counter(math.floor(m.started_at.timestamp() / period) for m in rows)
    ran_on = {m.task.worker for m in rows}
    print(f"\n[rate limit {backend}] starts per window: {sorted(per_window.items())}")
    assert {m.status for m in rows} == {"done"}
    assert max(per_window.values()) <= limit
    assert len(per_window) >= math.ceil(9 / limit)
    assert len(ran_on) == 2  # the limit held across both workers
    # replies posted while a window passed may start in the next without waiting
    records = [m.task for m in rows]
    assert deferrals([r.pk for r in records]) >= max(
        1, least_deferrals(records, limit=limit, period=period)
    )
    assert set(TaskRecord.objects.values_list("state", flat=True)) == {"SUCCESS"}


def test_deferrals_do_not_use_up_the_transient_error_retries(
    transactional_db, start_worker, alice
):
    # One start per 1.5 s window: the four runs of this reply (three 503s, then a
    # 200) cannot fit in fewer than four windows, so at least one run is deferred
    # on top of the three retries. If deferrals counted as retries the reply
    # would fail.
    with ScriptedServer() as server:
        server.script += [{"status": 503, "json": {"error": "busy"}}] * 3
        server.script.append(sse("Made it."))
        start_worker(
            "-Q",
            QUEUE,
            "-c",
            "1",
            env={
                "LLM_PROVIDER": "openai",
                "LLM_BASE_URL": server.url + "/v1",
                "AI_RATE_LIMIT": "1/1.5",
                "AI_RETRY_BACKOFF": "0.2",
            },
        )
        (message,) = ask_many(alice, 1)

        (message,) = wait_all_done([message], timeout=40)

        record = message.task
        retries = record.events.filter(kind="retry")
        assert (message.status, message.content) == ("done", "Made it.")
        assert len(server.requests) == 4
        assert retries.filter(data__error__icontains="503").count() == 3
        assert deferrals([record.pk]) >= 1


def test_a_flooding_user_does_not_make_another_users_replies_fail(
    transactional_db, start_worker, alice, bob, settings
):
    # Alice posts replies as fast as three threads can against a limit of 2 starts a second,
    # each allowed two deferrals; Bob asks twice meanwhile. A first-come limit
    # puts Bob behind Alice's line in every window until his deferrals run out
    # (his replies fail); the fair share (tasks_app.ratelimit.take_fair) gives
    # him one of the two starts of a window while both ask.
    import threading
    import time

    worker = start_worker(
        "-Q",
        QUEUE,
        "-c",
        "4",
        "--prefetch-multiplier",
        "1",
        env={
            "LLM_PROVIDER": "extractive",
            "AI_RATE_LIMIT": "2/1",
            "AI_MAX_DEFERRALS": "2",
        },
    )
    del worker
    # Alice keeps 40 replies in flight (the per-user cap, as in production but
    # higher): her deferrals keep every window contended without a queue so deep
    # that Bob's retries wait behind it for reasons other than the limit.
    settings.AI_MAX_REPLIES_IN_FLIGHT = 40
    flood = conversations.create_conversation(alice)
    stop = threading.Event()
    flooded = []

    def flood_until_stopped():
        from django.db import connection

        try:
            while not stop.wait(0.01):
                try:
                    posted = conversations.post_message(flood, "more", queue=QUEUE)
                except conversations.TooManyReplies:
                    continue  # 40 in flight: post again when one has ended
                flooded.append(posted.assistant_message.pk)
        finally:
            connection.close()

    flooders = [threading.Thread(target=flood_until_stopped) for _ in range(3)]
    for flooder in flooders:
        flooder.start()
    try:
        time.sleep(3)  # Alice holds the limit
        light = ask_many(bob, 2)
        rows = wait_all_done(light, timeout=60)
    finally:
        stop.set()
        for flooder in flooders:
            flooder.join(10)

    print(
        f"\n[fair share] Bob: {[(m.status, m.content[:30]) for m in rows]};"
        f" Alice posted {len(flooded)}, done"
        f" {Message.objects.filter(pk__in=flooded, status='done').count()}"
    )
    assert len(flooded) > 15  # Alice flooded before and while Bob asked
    assert [m.status for m in rows] == ["done", "done"]
    # the record ends just after the message it wrote
    wait_for(
        lambda: (
            set(
                TaskRecord.objects.filter(pk__in=[m.task_id for m in rows]).values_list(
                    "state", flat=True
                )
            )
            == {"SUCCESS"}
        ),
        10,
        message="Bob's records to end SUCCESS",
    )
