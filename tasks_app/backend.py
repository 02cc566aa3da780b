"""django-celery-results' database backend, taught to respect ledger refusals."""

from __future__ import annotations

from celery import states
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
