"""Retry policy every domain's tasks share: backoff, and the database errors a
task retries rather than fails on."""

from __future__ import annotations

import random

from django.db import InterfaceError, OperationalError

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
