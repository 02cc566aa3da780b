"""STARTED written late: a short run commits one transition, not two.

A delivery the ledger lets run (services.may_start_later: one read, no commit,
after which it refuses cancelled, stale, finished, poisoned and duplicate
deliveries as before) starts without writing STARTED. Its start is kept here,
in the process running it, and written:

- by the final SUCCESS statement, which then also sets started_at, worker,
  attempts and deliveries and adds the "started" event at the time the run began
  (services.mark_succeeded); a short task costs its pool process one commit;
- by this module's thread once the run is older than CLAW_STARTED_AFTER_SECONDS,
  with the lease, so a long task shows STARTED and holds its lease as before;
- before any other transition of the attempt (progress, retry, failure, revoke:
  services._transition calls flush), and before the run hands the attempt on.

Why a duplicate delivery cannot slip past an unwritten start: Redis hands a
message out again only once it has been unacknowledged for the visibility
timeout, counted from its delivery to this worker. A run may start late only if
its delivery plus the threshold is at most half that timeout ago (deferrable),
so its STARTED and lease are committed long before any second copy can exist.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connections

from tasks_app import background

logger = logging.getLogger(__name__)

RECEIVED_HEADER = "claw_received"  # set by base.LedgerRequest: delivery time


@dataclass(frozen=True)
class Start:
    name: str
    worker: str
    runner: str
    at: datetime  # when the run began: started_at and the "started" event
    clock: float  # time.monotonic() then


_unwritten: dict[str, Start] = {}  # celery_id -> start of a run not yet written
_lock = threading.RLock()  # held while a start is written: finish waits for it
_write: Callable[[str, Start], object] | None = None  # set by begin


def threshold() -> float:
    return settings.CLAW_STARTED_AFTER_SECONDS


def visibility_timeout() -> float | None:
    """The broker's redelivery timeout; None when it has none (the filesystem
    broker, whose consumed messages are gone: a late start could then be
    republished by the health check as vanished, so starts are written at once)."""
    if settings.IS_FILESYSTEM_BROKER:
        return None
    return settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout")


def deferrable(received: float | None, now: float | None = None) -> bool:
    """May a run of a message delivered at received (time.time()) start late?"""
    timeout = visibility_timeout()
    if not threshold() or not timeout or not received:
        return False
    age = (time.time() if now is None else now) - float(received)
    return age >= -1 and age + threshold() <= timeout / 2


def begin(celery_id: str, start: Start, write: Callable[[str, Start], object]) -> None:
    """Keep celery_id's start unwritten; write(celery_id, start) writes it when
    due (services.mark_started_late and the lease, given by the caller: this
    module sits below services)."""
    global _write
    with _lock:
        _write = write
        _unwritten[celery_id] = start
        background.ensure_thread("claw-starts", _write_forever)


def take(celery_id: str) -> Start | None:
    """The unwritten start of celery_id, now the caller's to write; None if it
    was written already (waits while this module's thread writes it)."""
    with _lock:
        return _unwritten.pop(celery_id, None)


def restore(celery_id: str, start: Start) -> None:
    """Put back a start taken by a final write that failed."""
    with _lock:
        _unwritten[celery_id] = start


def pending(celery_id: str) -> Start | None:
    with _lock:
        return _unwritten.get(celery_id)


def flush(celery_id: str) -> None:
    """Write celery_id's start now if it is still unwritten here.

    Always under the lock, even when the start is not in _unwritten: this
    module's thread takes a due start out before it writes it, and the caller's
    transition (services._transition) must come after that write. Without the
    lock a RETRY at the moment the thread was writing ran first, found the
    record still PENDING and was refused; the start then landed with a lease,
    and the retried message was refused as a duplicate, for good.
    """
    with _lock:
        start = _unwritten.pop(celery_id, None)
        if start is None:
            return
        try:
            _write(celery_id, start)
        except Exception:  # a lost database: the final write still carries it
            _unwritten[celery_id] = start
            raise


# Seconds without a start to write before the thread closes its connection.
# Closing after every write made a threads-pool worker of long tasks (AI
# replies, each older than the threshold) open a PostgreSQL connection for
# almost every run: 45 against 52 replies/s (bench/NOTES.md, issue 21).
IDLE_CLOSE = 10.0


def _write_forever() -> None:
    stop = threading.Event()  # never set: the thread lives as long as its process
    last_write = None
    while not stop.wait(max(0.02, threshold() / 5)):
        last_write = tick(last_write)


def tick(last_write: float | None, now: float | None = None) -> float | None:
    """One turn of the thread: write the due starts, and close the thread's own
    connection once it has had nothing to write for IDLE_CLOSE seconds.
    last_write: time.monotonic() of the last write while connected; returns it
    as it is after this turn."""
    now = time.monotonic() if now is None else now
    if _unwritten and write_due(now):
        return now
    if last_write is not None and now - last_write > IDLE_CLOSE:
        connections.close_all()  # idle until the next long run
        return None
    return last_write


def write_due(now: float | None = None) -> int:
    """Write the starts of runs older than the threshold; how many were written
    (tried: a failed write is logged and the run's final write carries it)."""
    now = time.monotonic() if now is None else now
    written = 0
    with _lock:
        due = [c for c, s in _unwritten.items() if now - s.clock >= threshold()]
        for celery_id in due:
            start = _unwritten.pop(celery_id)
            try:
                _write(celery_id, start)
                written += 1
            except Exception as exc:  # a database outage: the final write has it
                _unwritten[celery_id] = start
                logger.warning("Could not write the start of %s: %r", celery_id, exc)
    return written
