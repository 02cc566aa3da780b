"""Helpers for the fault tests: their own queue, short visibility timeout, effects.

Every worker here consumes only QUEUE, so the session's shared worker (other
suites) never takes these tasks and "every worker is down" holds for this queue.
"""

from __future__ import annotations

import json
import time

import pytest

from claw.celery import app
from tasks_app import services
from tasks_app.models import TaskRecord
from tests.harness import wait_for
from tests.tasks import EFFECTS_KEY, redis_client

QUEUE = "reliability"
VISIBILITY = 6  # seconds; the time-limit system check warns about it, as expected
FAULT_ENV = {
    "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY),
    # Sweep the unacked hash every second instead of every 100 s.
    "CELERY_UNACKED_RESTORE_INTERVAL": "1",
    "CELERY_UNACKED_RESTORE_THROTTLE": "1",
    # A worker these tests kill while it sweeps must not block the next sweep
    # for longer than a visibility timeout.
    "CELERY_UNACKED_MUTEX_EXPIRE": "3",
    # A running attempt's lease (renewed every third of it) lapses well before
    # the visibility timeout hands a killed worker's message out again.
    "CLAW_LEASE_SECONDS": "2",
}


@pytest.fixture
def redis_db(redis_broker):
    """The test Redis database, with this queue and the effect counters emptied."""
    drop_queue(QUEUE)
    redis_broker.delete(EFFECTS_KEY)
    yield redis_broker
    drop_queue(QUEUE)


@pytest.fixture
def fault_worker(start_worker):
    """Start a worker on QUEUE with the short visibility timeout."""

    def start(*extra: str, env: dict | None = None, wait: bool = True):
        return start_worker(
            "-Q", QUEUE, *extra, env={**FAULT_ENV, **(env or {})}, wait=wait
        )

    return start


def submit_effect(key: str, seconds: float = 0.0, **options) -> TaskRecord:
    return services.submit("tests.effect", args=[key, seconds], queue=QUEUE, **options)


def effects() -> dict[str, int]:
    raw = redis_client().hgetall(EFFECTS_KEY)
    return {k.decode(): int(v) for k, v in raw.items()}


def states(records) -> dict[int, str]:
    return dict(
        TaskRecord.objects.filter(pk__in=[r.pk for r in records]).values_list(
            "pk", "state"
        )
    )


def wait_final(records, timeout: float, heal_every: float | None = None) -> float:
    """Wait until every record is final; return the seconds it took.

    heal_every: also run the health check that often, as beat does in
    production: it re-publishes a PENDING record whose message the broker lost
    (kombu's Redis transport drops one popped by BRPOP but not yet in its
    unacked hash when the worker is killed between the two).
    """
    started = healed = time.monotonic()

    def all_final():
        nonlocal healed
        if heal_every and time.monotonic() - healed >= heal_every:
            from tasks_app.maintenance import check_health

            check_health(alerts_enabled=False)
            healed = time.monotonic()
        return all(
            state in TaskRecord.FINAL_STATES for state in states(records).values()
        )

    try:
        wait_for(all_final, timeout, interval=0.25, message="every record to finish")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {unfinished(records)}") from None
    return time.monotonic() - started


def unfinished(records) -> str:
    """What a timed-out wait leaves behind, so a failure says where it stuck."""
    from tasks_app.broker_inspect import queued_task_ids

    held = queued_task_ids([QUEUE]) or set()
    rows = TaskRecord.objects.filter(pk__in=[r.pk for r in records]).exclude(
        state__in=TaskRecord.FINAL_STATES
    )
    described = [
        f"#{r.pk} {r.state} deliveries={r.deliveries} attempts={r.attempts} "
        f"in_broker={r.celery_id in held}"
        for r in rows
    ]
    with app.connection_for_write() as conn:
        key = conn.default_channel.unacked_mutex_key  # kombu's unacked-sweep lock
    return f"unfinished: {described}; {key} ttl={redis_client().ttl(key)}"


def wait_state(record, state: str, timeout: float) -> None:
    def reached():
        record.refresh_from_db()
        return record.state == state

    wait_for(reached, timeout, interval=0.1, message=f"#{record.pk} to be {state}")


def drop_queue(queue: str) -> int:
    """Simulate broker data loss for one queue: its lists and its reserved messages.

    Only this queue's keys go, so other suites sharing the Redis database keep
    their bindings and messages.
    """
    from tasks_app.broker_inspect import UNACKED_KEY, redis_queue_keys

    client = redis_client()
    dropped = sum(client.llen(key) for key in redis_queue_keys([queue]))
    client.delete(*redis_queue_keys([queue]))
    for tag, raw in list(client.hscan_iter(UNACKED_KEY)):
        _, _, routing_key = json.loads(raw)
        if routing_key == queue:
            client.hdel(UNACKED_KEY, tag)
            client.zrem(UNACKED_KEY + "_index", tag)
            dropped += 1
    return dropped


def report(test: str, **measured) -> None:
    values = ", ".join(
        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in measured.items()
    )
    print(f"\n[{test}] {values}")
