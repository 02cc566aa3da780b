"""Fan-out: a task that replaces itself with a chord of members and waits for it
under its own id (knowledge-base updates, document jobs)."""

from __future__ import annotations

from tasks_app.retries import DATABASE_ERRORS


def parent_options(*, retry_backoff: float) -> dict:
    """Celery options of a task that fans out: its own run is short (plan, then
    Task.replace), retried on a lost database, and the chord's callback ends it."""
    return {
        "autoretry_for": DATABASE_ERRORS,
        "max_retries": 2,
        "retry_backoff": retry_backoff,
        "soft_time_limit": 180,
        "time_limit": 300,
    }
