"""tasks_app.retries.ride_out_database_outage: what every task body runs under."""

from __future__ import annotations

import pytest
from django.db import OperationalError, transaction

from tasks_app import retries


def flaky(failures: int):
    calls = []

    def call(value):
        calls.append(value)
        if len(calls) <= failures:
            raise OperationalError("server closed the connection unexpectedly")
        return value * 2

    return call, calls


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(retries.time, "sleep", slept.append)
    return slept


def test_a_database_error_is_waited_out_and_the_call_runs_again(
    transactional_db, no_sleep
):
    call, calls = flaky(3)
    assert retries.ride_out_database_outage(call, 21) == 42
    assert calls == [21, 21, 21, 21]
    assert len(no_sleep) == 3 and all(0 < s <= 5 for s in no_sleep)


def test_past_the_outage_budget_the_error_goes_out(transactional_db, settings):
    settings.CLAW_DATABASE_OUTAGE_SECONDS = 0
    call, calls = flaky(1)
    with pytest.raises(OperationalError):
        retries.ride_out_database_outage(call, 1)
    assert calls == [1]


def test_inside_a_transaction_the_error_goes_out_at_once(transactional_db):
    call, calls = flaky(1)
    with pytest.raises(OperationalError), transaction.atomic():
        retries.ride_out_database_outage(call, 1)
    assert calls == [1]


def test_every_task_runs_its_body_under_it(transactional_db):
    from claw.celery import app, registered_tasks

    registered_tasks()
    task = app.tasks["tasks_app.ping"]
    call, calls = flaky(2)
    original = task.run
    try:
        task.run = call
        assert task(5) == 10
    finally:
        task.run = original
    assert calls == [5, 5, 5]
