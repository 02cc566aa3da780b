"""Leases of running attempts, renewed by the process that runs them.

Redis hands an unacknowledged message out again after the visibility timeout,
whether the worker holding it died or is still running it. The ledger tells the
two apart by the record's lease (runner, lease_until): mark_started sets it, this
module renews it every third of CLAW_LEASE_SECONDS while the task runs, so a
second delivery is refused while the runner lives and may take over once the
lease lapsed. A pool process killed outright (kill -9) is seen by its worker,
which releases the lease before handing the message back (base.LedgerRequest).

One daemon thread per process renews every attempt that process runs (prefork:
one at a time; threads pool: many) in one UPDATE; a task shorter than a third of
the lease never costs a renewal.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid

from django.conf import settings
from django.db import connections

from tasks_app import background

logger = logging.getLogger(__name__)

_held: dict[str, str] = {}  # celery_id -> runner, of the attempts running here
_lock = threading.Lock()


def process_name(hostname: str, pid: int | None = None) -> str:
    """The runner prefix of a pool process: "hostname:pid:".

    The pid is what a worker knows of a pool process that died (request.worker_pid).
    """
    return f"{hostname}:{os.getpid() if pid is None else pid}:"


def new_runner(hostname: str) -> str:
    """The runner of one delivery run by this process: its process name and a
    token of its own (threads-pool deliveries share the process)."""
    return process_name(hostname) + uuid.uuid4().hex[:8]


def hold(celery_id: str, runner: str) -> None:
    """Renew celery_id's lease for as long as this process runs it."""
    with _lock:
        _held[celery_id] = runner
        background.ensure_thread("claw-lease", _renew_forever)


def drop(celery_id: str) -> None:
    with _lock:
        _held.pop(celery_id, None)


def held() -> dict[str, str]:
    with _lock:
        return dict(_held)


def _renew_forever() -> None:
    stop = threading.Event()  # never set: the thread lives as long as its process
    while not stop.wait(settings.CLAW_LEASE_SECONDS / 3):
        if held():
            renew_once()
            # This thread's own connection, idle until the next round: not kept.
            connections.close_all()


def renew_once() -> int:
    """Renew the leases of every attempt running in this process.

    Returns the rows renewed, 0 if nothing runs here, -1 if the write failed.
    """
    from tasks_app import services

    by_runner: dict[str, list[str]] = {}
    for celery_id, runner in held().items():
        by_runner.setdefault(runner, []).append(celery_id)
    renewed = 0
    try:
        for runner, celery_ids in by_runner.items():
            renewed += services.renew_leases(celery_ids, runner=runner)
    except Exception as exc:  # a database restart: the next round tries again
        logger.warning("Could not renew task leases: %r", exc)
        return -1
    return renewed
