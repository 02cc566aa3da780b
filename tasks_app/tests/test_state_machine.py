"""Random sequences of submit / start / retry / succeed / fail / cancel / manual retry.

Whatever the order (late signals, duplicates, cancels racing a run), the record only
makes legal moves, finished states stick until an explicit retry, and a record
that was cancelled never ends SUCCESS.
"""

from __future__ import annotations

from unittest.mock import patch

import pytest
from django.db import transaction
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tasks_app import services
from tasks_app.models import TaskRecord

State = TaskRecord.State
FINAL = {State.SUCCESS, State.FAILURE, State.REVOKED}
LEGAL = {
    State.PENDING: {State.STARTED, State.REVOKED, State.FAILURE},
    State.STARTED: {
        State.RETRY,
        State.SUCCESS,
        State.FAILURE,
        State.REVOKED,
        State.LOST,
    },
    State.RETRY: {State.STARTED, State.REVOKED, State.FAILURE},
    State.SUCCESS: set(),
    State.FAILURE: {State.PENDING},  # manual retry only
    State.REVOKED: {State.PENDING},
    State.LOST: {State.PENDING},
}


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.patches = [
            patch("tasks_app.services.app.send_task"),
            patch("tasks_app.workers.revoke"),
        ]
        for p in self.patches:
            p.start()
        with transaction.atomic():
            self.record = services.submit("tests.add", args=[1, 1])
        self.state = State.PENDING
        self.cancelled_this_attempt = False
        self.explicit_retries = 0

    def teardown(self):
        for p in self.patches:
            p.stop()

    def _observe(self, explicit_retry: bool = False) -> None:
        self.record.refresh_from_db()
        new = self.record.state
        if new != self.state:
            assert new in LEGAL[self.state], f"illegal {self.state} -> {new}"
            if self.state in (State.FAILURE, State.REVOKED, State.LOST):
                assert explicit_retry, f"{self.state} left without a manual retry"
        if new == State.PENDING and explicit_retry:
            self.cancelled_this_attempt = False
        self.state = new

    @property
    def celery_id(self) -> str:
        return TaskRecord.objects.get(pk=self.record.pk).celery_id

    @rule()
    def worker_starts(self):
        refusal = services.mark_started(self.celery_id, name="tests.add", worker="w")
        if self.cancelled_this_attempt:
            assert refusal is not None
        self._observe()

    @rule()
    def celery_retries(self):
        services.mark_retry(self.celery_id, error="transient")
        self._observe()

    @rule()
    def worker_succeeds(self):
        services.mark_succeeded(self.celery_id)
        self._observe()

    @rule()
    def worker_fails(self):
        services.mark_failed(self.celery_id, error="boom")
        self._observe()

    @rule()
    def worker_lost(self):
        services.mark_lost(TaskRecord.objects.get(pk=self.record.pk), reason="gone")
        self._observe()

    # Operator actions only where they can apply, so more steps reach interesting
    # states; worker signals arrive at any time, as late or duplicated ones do.
    @precondition(lambda self: self.state in TaskRecord.ACTIVE_STATES)
    @rule()
    def user_cancels(self):
        try:
            services.cancel(TaskRecord.objects.get(pk=self.record.pk))
            self.cancelled_this_attempt = True
        except services.InvalidTransition:
            assert self.state not in TaskRecord.ACTIVE_STATES
        self._observe()

    @precondition(lambda self: self.state in TaskRecord.RETRYABLE_STATES)
    @rule()
    def user_retries(self):
        try:
            services.retry(TaskRecord.objects.get(pk=self.record.pk))
            self.explicit_retries += 1
        except services.InvalidTransition:
            assert self.state not in TaskRecord.RETRYABLE_STATES
        self._observe(explicit_retry=True)

    @invariant()
    def cancelled_never_succeeds(self):
        if self.cancelled_this_attempt:
            assert self.state != State.SUCCESS


@pytest.mark.django_db(transaction=True)
def test_ledger_transitions_are_always_legal():
    LedgerMachine.TestCase.settings = settings(
        max_examples=250,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    LedgerMachine.TestCase().runTest()
