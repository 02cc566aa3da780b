"""django-celery-results' database backend, taught to respect ledger refusals and
to survive a database restart."""

from __future__ import annotations

from celery import states
from django.db import InterfaceError, OperationalError, connections
from django_celery_results.backends.database import DatabaseBackend


class LedgerBackend(DatabaseBackend):
    def _store_result(
        self, task_id, result, status, traceback=None, request=None, **kw
    ):
        # track_started writes STARTED before the task body runs; for a delivery the
        # ledger refused (say a redelivery of a finished task) that write would
        # overwrite the stored result.
        if status == states.STARTED and getattr(request, "claw_refusal", None):
            return result
        return super()._store_result(
            task_id, result, status, traceback=traceback, request=request, **kw
        )

    def exception_safe_to_retry(self, exc) -> bool:
        # A restarted PostgreSQL leaves a dead connection behind. Storing a result
        # is an idempotent upsert by task id, so drop the connection and store again
        # (result_backend_always_retry) rather than fail a task whose work is done.
        if isinstance(exc, InterfaceError | OperationalError):
            for conn in connections.all(initialized_only=True):
                conn.close()
            return True
        return super().exception_safe_to_retry(exc)
