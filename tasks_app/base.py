"""The base class of every task in the app: lets the ledger veto a delivery."""

from __future__ import annotations

from celery import Task
from celery.exceptions import Ignore

POISONED = "stopped: its worker process died every time it ran it"


class PoisonedTask(Exception):
    """Stored as the result of a task refused after too many deliveries."""


class LedgerTask(Task):
    def before_start(self, task_id, args, kwargs):
        # Set by the task_prerun receiver when the ledger refuses this delivery
        # (cancelled, poisoned or already finished). Ignore acknowledges the
        # message without running the task and without storing a result.
        refusal = getattr(self.request, "claw_refusal", None)
        if refusal:
            # The stored result must agree with the record: a cancelled delivery
            # shows REVOKED, a poisoned one FAILURE (not the STARTED its last,
            # killed run left behind). A finished one keeps its result.
            if refusal == "cancelled":
                self.backend.mark_as_revoked(task_id, refusal, request=self.request)
            elif refusal == "poisoned":
                self.backend.mark_as_failure(
                    task_id, PoisonedTask(POISONED), request=self.request
                )
            raise Ignore(refusal)
