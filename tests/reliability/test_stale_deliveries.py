"""Deliveries the ledger must refuse: an earlier attempt's message and a second
copy of the attempt that is running now (issue 15, "old attempts run untracked").

Both come from Redis itself: with acks_late an unacknowledged message is handed
out again once it is older than the visibility timeout (VISIBILITY, 6 s here),
whether the worker holding it died or is still running it.
"""

from __future__ import annotations

import signal
import time

import pytest

from tasks_app import broker_inspect, services
from tasks_app.models import TaskRecord
from tests.harness import wait_for
from tests.reliability.conftest import (
    QUEUE,
    VISIBILITY,
    effects,
    report,
    submit_effect,
    wait_state,
)

pytestmark = [pytest.mark.reliability, pytest.mark.worker, pytest.mark.timeout(60)]
State = TaskRecord.State
REFUSED = "refused"  # TaskEvent.Kind.REFUSED, spelled out so main can run this


def held(record) -> bool:
    """Whether Redis still holds a message of the record's attempt."""
    return record.celery_id in broker_inspect.queued_task_ids([QUEUE])


def refusals(record) -> list:
    return list(record.events.filter(kind=REFUSED))


def test_an_earlier_attempts_message_handed_back_after_a_retry_is_refused_and_shown(
    transactional_db, redis_db, fault_worker
):
    key = "stale-attempt"
    first = fault_worker("-c", "1")
    record = submit_effect(key, seconds=3)
    wait_state(record, State.STARTED, 20)
    old_id = record.celery_id
    # Killed outright while it runs: the message stays unacknowledged in Redis.
    first.kill(signal.SIGKILL)
    first.proc.wait(10)

    # What check_task_health does for a lost idempotent record (without waiting
    # for the task's hard time limit): LOST, then a new attempt with a new id.
    assert services.mark_lost(record, reason="worker killed by the test")
    record.refresh_from_db()
    services.retry(record)
    record.refresh_from_db()
    assert record.celery_id != old_id

    fault_worker("-c", "2")  # runs the new attempt; Redis hands back the old one

    def settled():
        record.refresh_from_db()
        refused = record.events.filter(kind=REFUSED, celery_id=old_id).exists()
        done = refused and record.state == State.SUCCESS
        return done or effects().get(key, 0) >= 2  # the hole: the old one ran

    wait_for(settled, 25, interval=0.25, message="the old delivery to be settled")

    report(
        "stale attempt", effects=effects().get(key, 0), refused=len(refusals(record))
    )
    assert effects() == {key: 1}
    (refusal,) = refusals(record)
    assert record.state == State.SUCCESS
    assert record.attempts == 2  # the killed run and the new attempt, nothing else
    assert refusal.celery_id == old_id
    assert refusal.data["reason"] == "stale"
    assert refusal.data["current"] == record.celery_id


def test_a_second_delivery_of_the_running_attempt_is_refused_and_recorded(
    transactional_db, redis_db, fault_worker
):
    key = "outlives-visibility"
    worker = fault_worker("-c", "2")  # a free pool process for the second copy
    record = submit_effect(key, seconds=VISIBILITY + 4)

    def settled():
        record.refresh_from_db()
        done = refusals(record) and record.state == State.SUCCESS
        return done or effects().get(key, 0) >= 2  # the hole: both copies ran

    def refused_while_running():
        record.refresh_from_db()
        return refusals(record) or record.is_final

    wait_for(refused_while_running, 20, interval=0.1, message="the second copy")
    time.sleep(1)  # the refused copy is acknowledged just after its event
    record.refresh_from_db()
    if record.state == State.STARTED:
        # Acknowledging the refused copy must not take away Redis' copy of the
        # running one (same delivery tag): were its worker killed now, the
        # attempt would come back after the visibility timeout.
        assert held(record)
    wait_for(settled, 20, interval=0.25, message="both deliveries to be settled")

    report("duplicate", effects=effects().get(key, 0), refused=len(refusals(record)))
    assert effects() == {key: 1}
    (refusal,) = refusals(record)
    assert record.state == State.SUCCESS
    assert (record.attempts, record.deliveries) == (1, 1)
    assert refusal.celery_id == record.celery_id
    assert refusal.data["reason"] == "duplicate"
    assert refusal.data["running_on"].startswith(worker.hostname + ":")
    # and the run's own acknowledgement removed it
    wait_for(lambda: not held(record), 5, interval=0.1, message="the ack")
