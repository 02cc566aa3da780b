"""STARTED written late (tasks_app.starts) through services, without a worker: the
worker paths are in tests/lifecycle/test_started_late.py."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from tasks_app import leases, services, signals, starts
from tasks_app.models import TaskRecord

State = TaskRecord.State
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def late_starts(settings):
    settings.CLAW_STARTED_AFTER_SECONDS = 0.5  # the default is 0.1


def begin(record: TaskRecord, ago: float = 0.2) -> starts.Start:
    start = starts.Start(
        record.name,
        "w1@host",
        "w1@host:1:abc",
        timezone.now() - timedelta(seconds=ago),
        time.monotonic() - ago,
    )
    starts.begin(record.celery_id, start, signals.write_late_start)
    return start


def kinds(record: TaskRecord) -> list[str]:
    return list(record.events.order_by("id").values_list("kind", flat=True))


def test_a_success_writes_the_unwritten_start_in_the_same_statement():
    record = services.submit("tests.add", args=[1, 2])
    assert services.may_start_later(record.celery_id, name=record.name)
    start = begin(record)

    assert services.mark_succeeded(record.celery_id)

    record.refresh_from_db()
    assert record.state == State.SUCCESS
    assert kinds(record) == ["queued", "started", "succeeded"]
    assert record.started_at == start.at
    assert record.events.get(kind="started").at == start.at
    assert (record.attempts, record.deliveries) == (1, 1)
    assert (record.worker, record.runner) == ("w1@host", "w1@host:1:abc")
    assert starts.pending(record.celery_id) is None


def test_any_other_transition_writes_started_first():
    record = services.submit("tests.add", args=[1, 2])
    begin(record)

    assert services.record_progress(record.celery_id, 1, 4)
    record.refresh_from_db()
    assert record.state == State.STARTED and record.lease_until is not None
    assert kinds(record) == ["queued", "started", "progress"]
    assert services.mark_failed(record.celery_id, error="boom")
    record.refresh_from_db()
    assert kinds(record) == ["queued", "started", "progress", "failed"]
    assert (record.state, record.attempts) == (State.FAILURE, 1)
    leases.drop(record.celery_id)


def test_a_long_run_gets_started_and_its_lease_from_the_writer():
    record = services.submit("tests.add", args=[1, 2])
    begin(record, ago=starts.threshold() + 0.1)
    other = services.submit("tests.add", args=[3, 4])
    begin(other, ago=0)  # not due yet

    assert starts.write_due() == 1

    record.refresh_from_db()
    assert record.state == State.STARTED and record.lease_until is not None
    assert leases.held().get(record.celery_id) == "w1@host:1:abc"
    assert services.mark_succeeded(record.celery_id)  # STARTED -> SUCCESS
    record.refresh_from_db()
    assert kinds(record) == ["queued", "started", "succeeded"]
    assert TaskRecord.objects.get(pk=other.pk).state == State.PENDING
    starts.take(other.celery_id)
    leases.drop(record.celery_id)


def test_a_cancel_during_an_unwritten_run_wins_over_its_success():
    record = services.submit("tests.add", args=[1, 2])
    begin(record)
    services.cancel(record)  # finds it PENDING: REVOKED at once

    assert not services.mark_succeeded(record.celery_id)

    record.refresh_from_db()
    assert record.state == State.REVOKED
    assert "succeeded" not in kinds(record) and "started" not in kinds(record)


def test_no_late_start_for_a_cancelled_finished_or_poisoned_record():
    cancelled = services.submit("tests.add", args=[1, 2])
    TaskRecord.objects.filter(pk=cancelled.pk).update(cancel_requested=True)
    finished = services.submit("tests.add", args=[1, 2])
    TaskRecord.objects.filter(pk=finished.pk).update(state=State.SUCCESS)
    poisoned = services.submit("tests.add", args=[1, 2])
    TaskRecord.objects.filter(pk=poisoned.pk).update(deliveries=99)

    for record in (cancelled, finished, poisoned):
        assert not services.may_start_later(record.celery_id, name=record.name)
    assert not services.may_start_later("no-such-id", name="tests.add")


def test_a_run_killed_before_its_start_was_written_counts_a_delivery():
    record = services.submit("tests.add", args=[1, 2])

    assert services.count_lost_run(record.celery_id)

    record.refresh_from_db()
    assert (record.state, record.deliveries) == (State.PENDING, 1)


@pytest.mark.django_db(transaction=True)
def test_the_writer_keeps_its_connection_until_it_has_been_idle_a_while():
    """Closing it after every write cost a threads-pool worker of long tasks a
    new PostgreSQL connection for almost every run (issue 21)."""
    record = services.submit("tests.add", args=[1, 2])
    now = time.monotonic()
    with starts._lock:  # the process's own writer thread must not write it first
        begin(record, ago=starts.threshold() + 0.1)
        assert starts.tick(None, now) == now  # wrote the due start
    record.refresh_from_db()
    assert record.state == State.STARTED
    assert connection.connection is not None
    assert starts.tick(now, now + starts.IDLE_CLOSE / 2) == now
    assert connection.connection is not None  # kept between writes
    assert starts.tick(now, now + starts.IDLE_CLOSE + 1) is None
    assert connection.connection is None  # closed once idle
    leases.drop(record.celery_id)
