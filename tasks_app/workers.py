"""The Celery cluster as seen through app.control: the only module that calls it.

Admin, API, health check and commands use these functions, and tests have one
seam to patch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings

from claw.celery import app

REPLY_TIMEOUT = 1.0  # seconds each broadcast waits for worker replies
# What a page (Workers, GET /api/v1/workers/, /health) waits: a worker's control
# mailbox answers within milliseconds on Redis and within a polling interval
# (0.1 s) on the filesystem broker.
QUICK_TIMEOUT = settings.CLAW_WORKER_REPLY_TIMEOUT


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
    controls: list[str] = field(default_factory=list)


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


def ping(
    timeout: float = REPLY_TIMEOUT, destination: list[str] | None = None
) -> list[str]:
    """Names of the workers that answered.

    With a destination the broadcast stops waiting as soon as each named worker
    answered, instead of waiting out the timeout.
    """
    limit = {"limit": len(destination)} if destination else {}
    replies = app.control.ping(timeout=timeout, destination=destination, **limit)
    return sorted(name for reply in replies or [] for name in reply)


def pool_name(implementation: str) -> str:
    """The worker's -P name from its stats' pool class path.

    Every pool's class is called TaskPool ("celery.concurrency.thread:TaskPool"),
    so the module tells them apart; the thread module's pool is -P threads.
    """
    module = implementation.rsplit(":", 1)[0].rsplit(".", 1)[-1]
    return {"thread": "threads"}.get(module, module)


def controls_for(pool: str) -> list[str]:
    """The controls a worker's pool supports: Celery restarts, grows and shrinks
    prefork pools only (a threads worker answers grow with an AttributeError)."""
    if pool != "prefork":
        return ["shutdown"]
    restart = ["restart"] if settings.CELERY_WORKER_POOL_RESTARTS else []
    return [*restart, "grow", "shrink", "shutdown"]


def cluster(timeout: float = REPLY_TIMEOUT) -> list[WorkerInfo]:
    """Every worker that answers, with pool, counters and its tasks.

    One broadcast (tasks_app.worker_commands.claw_report) asks every worker for
    everything at once, so this takes one timeout, not one per question. Pages
    pass QUICK_TIMEOUT; the health check's LOST decision keeps the longer one.
    """
    replies = app.control.broadcast("claw_report", reply=True, timeout=timeout) or []
    result = []
    for reply in replies:
        for name, report in reply.items():
            if not isinstance(report, dict) or "stats" not in report:
                # alive, but does not run this version of CLAW's worker code
                result.append(WorkerInfo(name=name, alive=True))
                continue
            info = report["stats"] or {}
            pool = info.get("pool", {})
            pool_kind = pool_name(str(pool.get("implementation", "")))
            result.append(
                WorkerInfo(
                    name=name,
                    alive=True,
                    pool=pool_kind,
                    concurrency=pool.get("max-concurrency"),
                    processed=sum((info.get("total") or {}).values()),
                    active=report["active"] or [],
                    reserved=report["reserved"] or [],
                    scheduled=report["scheduled"] or [],
                    queues=[q["name"] for q in report["active_queues"] or []],
                    controls=controls_for(pool_kind),
                )
            )
    return sorted(result, key=lambda info: info.name)


class UnknownWorker(LookupError):
    """A control was addressed to workers that do not answer a ping."""

    def __init__(self, names: list[str]):
        self.names = names
        super().__init__(f"No worker named {', '.join(names)} answered.")


def _answering(destination: list[str] | None) -> list[str]:
    """The workers a shutdown goes to: the named ones, each of which must answer a
    ping (UnknownWorker names those that do not)."""
    alive = set(ping(REPLY_TIMEOUT, destination=list(destination)))
    missing = sorted(set(destination) - alive)
    if missing:
        raise UnknownWorker(missing)
    return sorted(alive)


def _pools(destination: list[str] | None) -> dict[str, str]:
    """The pool of every live worker, or of each named one (UnknownWorker names
    those that do not answer)."""
    if destination:
        inspect = app.control.inspect(
            destination=list(destination), timeout=REPLY_TIMEOUT, limit=len(destination)
        )
    else:
        inspect = app.control.inspect(timeout=QUICK_TIMEOUT)
    stats = inspect.stats() or {}
    missing = sorted(set(destination or []) - set(stats))
    if missing or not stats:
        raise UnknownWorker(missing)
    return {
        name: pool_name(str(info.get("pool", {}).get("implementation", "")))
        for name, info in stats.items()
    }


def _pool_control(
    control: str, command: str, destination: list[str] | None, **arguments
) -> dict[str, dict]:
    """Send a pool command to the workers whose pool supports it and return each
    worker's own answer ({"ok": ...} or {"error": ...}, as Celery replies), by
    name. A worker whose pool does not support it is not sent it (Celery's
    threads pool answers grow with an AttributeError and takes a restart as a
    no-op it calls "reload started"); its answer says why."""
    pools = _pools(destination)
    answers = {
        name: {
            "error": f"A {pool} pool cannot {control}: Celery supports it on "
            "prefork pools only."
        }
        for name, pool in pools.items()
        if control not in controls_for(pool)
    }
    names = sorted(set(pools) - set(answers))
    if names:
        replies = app.control.broadcast(
            command,
            arguments=arguments,
            destination=names,
            reply=True,
            timeout=REPLY_TIMEOUT,
            limit=len(names),
        )
        got = {
            name: answer for reply in replies or [] for name, answer in reply.items()
        }
        silent = {"error": f"No answer within {REPLY_TIMEOUT:g} s."}
        answers |= {name: got.get(name, silent) for name in names}
    return dict(sorted(answers.items()))


def pool_restart(destination: list[str] | None = None) -> dict[str, dict]:
    return _pool_control("restart", "pool_restart", destination, reload=False)


def pool_grow(destination: list[str], n: int = 1) -> dict[str, dict]:
    return _pool_control("grow", "pool_grow", destination, n=n)


def pool_shrink(destination: list[str], n: int = 1) -> dict[str, dict]:
    return _pool_control("shrink", "pool_shrink", destination, n=n)


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


def shutdown(destination: list[str]) -> dict[str, dict]:
    # Never broadcast to everyone by accident: a destination is required.
    if not destination:
        raise ValueError("shutdown needs at least one worker name")
    names = _answering(destination)
    # A worker exits on this command without answering it; it answered the ping.
    app.control.shutdown(destination=names)
    return {name: {"ok": "shutting down"} for name in names}
