"""The base class of every task in the app: lets the ledger veto a delivery."""

from __future__ import annotations

from celery import Task
from celery.exceptions import Ignore


class LedgerTask(Task):
    def before_start(self, task_id, args, kwargs):
        # Set by the task_prerun receiver when the ledger refuses this delivery
        # (cancelled, poisoned or already finished). Ignore acknowledges the
        # message without running the task and without storing a result.
        refusal = getattr(self.request, "claw_refusal", None)
        if refusal:
            if refusal == "cancelled":
                self.backend.mark_as_revoked(task_id, refusal, request=self.request)
            raise Ignore(refusal)
