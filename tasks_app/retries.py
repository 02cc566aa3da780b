"""Retry policy every domain's tasks share: backoff, and the database errors a
task retries rather than fails on."""

from __future__ import annotations

import contextlib
import logging
import random
import time

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections

logger = logging.getLogger(__name__)

# A lost or restarted database: worth another try of an idempotent task.
DATABASE_ERRORS = (OperationalError, InterfaceError)


def backoff(
    failures: int, *, base: float, maximum: float, full_jitter: bool = False
) -> float:
    """Exponential backoff with jitter: between half and all of base * 2**n, at
    most maximum (full_jitter: between 0 and all of it, as Celery's
    retry_jitter). Celery's own retry_backoff needs whole seconds
    (random.randrange); base may be 0.5 here."""
    ceiling = min(maximum, base * 2**failures)
    return random.uniform(0 if full_jitter else ceiling / 2, ceiling)


def ride_out_database_outage(call, *args, **kwargs):
    """Run call; while it raises a database error, reconnect and run it again with
    backoff, for up to CLAW_DATABASE_OUTAGE_SECONDS, then let the error out.

    Every task body runs under it (tasks_app.base.LedgerTask), in process rather
    than as a Celery retry: during an outage the retry's ledger write would fail
    too, and a retry would count as one more delivery of the attempt. Tasks are
    idempotent (delivery is at least once), so running the body again is safe.
    Inside a transaction the error goes out at once: the caller's transaction
    died with the connection and must fail as a whole.
    """
    started, failures = time.monotonic(), 0
    while True:
        try:
            return call(*args, **kwargs)
        except DATABASE_ERRORS as error:
            waited = time.monotonic() - started
            if waited >= settings.CLAW_DATABASE_OUTAGE_SECONDS or in_transaction():
                raise
            logger.warning(
                "Database unavailable after %.1f s, running %s again: %r",
                waited,
                getattr(call, "__name__", call),
                error,
            )
            close_connections()
            time.sleep(backoff(failures, base=0.5, maximum=5))
            failures += 1


def in_transaction() -> bool:
    return any(c.in_atomic_block for c in connections.all(initialized_only=True))


def close_connections() -> None:
    """Drop this thread's database connections after a database error, so the
    next query opens a new one (Django reconnects only a closed connection)."""
    if in_transaction():
        return
    for conn in connections.all(initialized_only=True):
        with contextlib.suppress(*DATABASE_ERRORS):
            conn.close()
