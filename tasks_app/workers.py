"""The Celery cluster as seen through app.control: the only module that calls it.

Admin, API, health check and commands use these functions, and tests have one
seam to patch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings

from claw.celery import app

REPLY_TIMEOUT = 1.0  # seconds each broadcast waits for worker replies


@dataclass
class WorkerInfo:
    name: str
    alive: bool = False
    pool: str = ""
    concurrency: int | None = None
    processed: int = 0
    active: list[dict] = field(default_factory=list)
    reserved: list[dict] = field(default_factory=list)
    scheduled: list[dict] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)


def prefetch_multiplier_for(queues: set[str], configured: int) -> int:
    """Messages each pool process of a worker on these queues may reserve.

    With acks_late a reserved message is not acknowledged until it has run, so
    prefetching is safe against kill -9 (the broker hands the reserved messages
    out again: at once on a clean shutdown, after the visibility timeout on
    Redis if the worker was killed); its cost is that a slow task can hold
    messages that an idle worker elsewhere could have started. So a worker on a
    slow queue (CLAW_SLOW_QUEUES, e.g. LLM calls) keeps the configured multiplier
    (1), and one that consumes only short-task queues takes
    CLAW_SHORT_QUEUE_PREFETCH, saving a broker round trip between short tasks.
    An explicit --prefetch-multiplier (not the configured value) is kept.
    """
    if configured != settings.CELERY_WORKER_PREFETCH_MULTIPLIER:
        return configured
    if not queues or queues & set(settings.CLAW_SLOW_QUEUES):
        return configured
    return max(configured, settings.CLAW_SHORT_QUEUE_PREFETCH)


def ping(timeout: float = REPLY_TIMEOUT) -> list[str]:
    """Names of the workers that answered."""
    replies = app.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


def pool_name(implementation: str) -> str:
    """The worker's -P name from its stats' pool class path.

    Every pool's class is called TaskPool ("celery.concurrency.thread:TaskPool"),
    so the module tells them apart; the thread module's pool is -P threads.
    """
    module = implementation.rsplit(":", 1)[0].rsplit(".", 1)[-1]
    return {"thread": "threads"}.get(module, module)


def cluster(timeout: float = REPLY_TIMEOUT) -> list[WorkerInfo]:
    """Every worker that answers, with pool, counters and its tasks."""
    inspect = app.control.inspect(timeout=timeout)
    stats = inspect.stats() or {}
    active = inspect.active() or {}
    reserved = inspect.reserved() or {}
    scheduled = inspect.scheduled() or {}
    queues = inspect.active_queues() or {}
    result = []
    for name in sorted(set(stats) | set(active)):
        info = stats.get(name, {})
        pool = info.get("pool", {})
        result.append(
            WorkerInfo(
                name=name,
                alive=True,
                pool=pool_name(str(pool.get("implementation", ""))),
                concurrency=pool.get("max-concurrency"),
                processed=sum((info.get("total") or {}).values()),
                active=active.get(name, []),
                reserved=reserved.get(name, []),
                scheduled=scheduled.get(name, []),
                queues=[q["name"] for q in queues.get(name, [])],
            )
        )
    return result


def queue_lengths(queues: tuple[str, ...] | None = None) -> dict[str, int]:
    """Messages waiting in each queue.

    kombu's passive declare counts every priority sub-list of a Redis queue (Flower
    counts only the first, mher/flower#928) and the files of the filesystem broker.
    """
    lengths = {}
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for name in queues or settings.CLAW_QUEUES:
            try:
                lengths[name] = channel.queue_declare(name, passive=True).message_count
            except Exception:
                lengths[name] = 0
    return lengths


def revoke(celery_id: str, *, terminate: bool = False) -> None:
    # terminate=True only reaches prefork children; other pools stop at the next
    # progress report through the durable flag.
    app.control.revoke(celery_id, terminate=terminate, signal="SIGTERM")


def pool_restart(destination: list[str] | None = None) -> list[dict]:
    return (
        app.control.pool_restart(
            destination=destination, reply=True, timeout=REPLY_TIMEOUT
        )
        or []
    )


def pool_grow(destination: list[str], n: int = 1) -> list[dict]:
    return (
        app.control.pool_grow(
            n=n, destination=destination, reply=True, timeout=REPLY_TIMEOUT
        )
        or []
    )


def pool_shrink(destination: list[str], n: int = 1) -> list[dict]:
    return (
        app.control.pool_shrink(
            n=n, destination=destination, reply=True, timeout=REPLY_TIMEOUT
        )
        or []
    )


def shutdown(destination: list[str]) -> None:
    # Never broadcast to everyone by accident: a destination is required.
    if not destination:
        raise ValueError("shutdown needs at least one worker name")
    app.control.shutdown(destination=destination)
