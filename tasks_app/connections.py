"""Database connections in worker processes: kept between tasks, recycled like
Django recycles them between requests."""

from __future__ import annotations

from django.db import connections


def recycle() -> None:
    """After a task: close a connection that is broken, was left with autocommit
    off, or is older than CONN_MAX_AGE; keep the others for the next task.

    Celery's Django fixup would close every connection around every task (a new
    PostgreSQL connection per task) unless CELERY_DB_REUSE_MAX is set; settings set
    it, and this does Django's request-end check instead. The check is not
    followed by CONN_HEALTH_CHECKS' SELECT 1 before the next task: the ledger's
    task_prerun write runs first, and it reconnects by itself when the server has
    gone away (ledger_writes.reconnecting), so a task body always starts on a
    connection that just worked.
    """
    for conn in connections.all(initialized_only=True):
        conn.close_if_unusable_or_obsolete()
        conn.health_check_done = True
