"""The base class of every task in the app: lets the ledger veto a delivery."""

from __future__ import annotations

import logging
import time

from billiard.exceptions import WorkerLostError
from celery import Task
from celery.exceptions import Ignore, Terminated
from celery.worker.request import Request

logger = logging.getLogger(__name__)
DUPLICATE = "duplicate"  # services.mark_started's refusal of a second copy
POISONED = "stopped: its worker process died every time it ran it"


class PoisonedTask(Exception):
    """Stored as the result of a task refused after too many deliveries."""


class LedgerRequest(Request):
    """A delivery as the worker's main process sees it."""

    def __init__(self, message, *args, **kwargs):
        super().__init__(message, *args, **kwargs)
        # When the broker handed the message to this worker: its visibility
        # timeout runs from here (tasks_app.starts.deferrable). Travels to the
        # pool process in the request dict, as the message's headers do.
        from tasks_app import starts

        self._request_dict[starts.RECEIVED_HEADER] = time.time()

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        if isinstance(
            exc, WorkerLostError | Terminated | SystemExit | KeyboardInterrupt
        ):
            self._release_lease()
        if isinstance(exc, Ignore) and exc.args[:1] == (DUPLICATE,):
            from tasks_app import broker_inspect

            # Acknowledged, but Redis keeps its copy for the run this one was
            # refused for (the same delivery tag).
            broker_inspect.keep_copy_on_ack(self._message)
        return super().on_failure(exc_info, send_failed_event, return_ok)

    def _release_lease(self) -> None:
        # The pool process running it died (kill -9, out of memory, terminated
        # by a revoke or on a broker connection loss): release its lease before
        # the message goes back to the broker, so the redelivery takes the
        # attempt over instead of being refused as a duplicate of a dead run.
        if not self.worker_pid:
            return
        from tasks_app import leases, services

        try:
            holder = leases.process_name(self.hostname, self.worker_pid)
            if not services.release_lease(self.id, holder=holder):
                # It died before its STARTED was written (tasks_app.starts).
                services.count_lost_run(self.id)
        except Exception as error:  # the lease then lapses on its own
            logger.warning("Could not release the lease of %s: %r", self.id, error)


class LedgerTask(Task):
    Request = "tasks_app.base:LedgerRequest"

    def __call__(self, *args, **kwargs):
        # A database restart or outage while the body runs: wait for the
        # database and run the body again instead of failing the task.
        from tasks_app import retries

        return retries.ride_out_database_outage(super().__call__, *args, **kwargs)

    def replace(self, sig):
        # The replacing canvas's last task runs under this task's id while the
        # record stays STARTED: it must find the lease free, or it would be
        # refused as a duplicate of this run. Released before the canvas is sent.
        runner = getattr(self.request, "claw_runner", None)
        if runner:
            from tasks_app import leases, services, starts

            starts.flush(self.request.id)
            leases.drop(self.request.id)
            services.release_lease(self.request.id, holder=runner)
        return super().replace(sig)

    def before_start(self, task_id, args, kwargs):
        # Set by the task_prerun receiver when the ledger refuses this delivery
        # (cancelled, poisoned, stale, duplicate or already finished). Ignore
        # acknowledges the message without running the task and without storing
        # a result: a stale or duplicate delivery leaves the result of the run
        # that counts alone.
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
