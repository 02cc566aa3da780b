"""Redis restarted (empty) and Redis down, on a private redis-server.

The shared Redis serves other engineers' tests, so these start their own
redis-server on a loopback port, without persistence: a restart loses every
message, as a crash of an unpersisted Redis would. The effect counters stay in
the shared test database (CLAW_TEST_EFFECTS_URL) so the restart cannot hide a
double run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time

import pytest
from django.conf import settings
from django.db import transaction
from kombu import pools

from bench import private
from claw.celery import app
from conftest import require_service
from tasks_app import maintenance, services
from tasks_app.models import TaskRecord
from tests.harness import wait_for
from tests.reliability.conftest import QUEUE, effects, report, states

pytestmark = [pytest.mark.reliability, pytest.mark.worker]
State = TaskRecord.State
PORT = 6390
URL = f"redis://127.0.0.1:{PORT}/0"


@pytest.fixture
def private_redis(tmp_path):
    if not shutil.which("redis-server"):
        require_service("redis-server binary", "127.0.0.1", 1)
    server = private.Redis(PORT, tmp_path, appendonly=False).start()
    yield server
    server.kill()


@contextlib.contextmanager
def broker(url: str):
    """Point this process's Celery app at another broker, then back."""

    def switch(to: str) -> None:
        # Celery reads CELERY_BROKER_URL from the environment before its config.
        os.environ["CELERY_BROKER_URL"] = to
        app.conf.update(broker_url=to, broker_read_url=to, broker_write_url=to)
        # kombu keeps connection pools per URL globally: drop connections to a
        # server that was restarted.
        pools.reset()
        app._pool = None
        app.amqp._producer_pool = None

    previous = os.environ["CELERY_BROKER_URL"]
    switch(url)
    try:
        yield
    finally:
        switch(previous)


@pytest.fixture
def private_worker(fault_worker, private_redis):
    return lambda *extra: fault_worker(
        *extra,
        env={
            "CELERY_BROKER_URL": URL,
            "CLAW_TEST_EFFECTS_URL": settings.CELERY_BROKER_URL,
        },
    )


def answers(worker) -> bool:
    try:
        return bool(app.control.ping(destination=[worker.hostname], timeout=0.5))
    except Exception:  # a pooled connection from before the restart
        pools.reset()
        app._pool = None
        app.amqp._producer_pool = None
        return False


def reconcile_until_final(records, timeout: float) -> int:
    """Run the health check (as beat would) until every record is final."""
    republished = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(s in TaskRecord.FINAL_STATES for s in states(records).values()):
            return republished
        result = maintenance.check_health(alerts_enabled=False)
        republished += len(result["republished"]) + len(result["requeued"])
        time.sleep(1)
    raise AssertionError(f"not final after {timeout}s: {states(records)}")


def test_redis_restarted_empty_with_tasks_queued_loses_nothing(
    transactional_db, redis_db, private_redis, private_worker, settings
):
    settings.CLAW_REPUBLISH_PENDING_AFTER = 0
    with broker(URL):
        worker = private_worker("-c", "1")
        first = services.submit(
            "tests.bounded_effect", args=["restart-0", 1.5], queue=QUEUE
        )
        queued = [
            services.submit("tests.bounded_effect", args=[f"restart-{i}"], queue=QUEUE)
            for i in range(1, 6)
        ]
        records = [first, *queued]
        wait_for(
            lambda: states([first])[first.pk] == State.STARTED, 20, message="running"
        )

        private_redis.kill()
        private_redis.start()  # empty: every queued message is gone
        restarted_at = time.monotonic()
        republished = reconcile_until_final(records, 60)
        answered_ping = answers(worker)

    counts = effects()
    final = states(records)
    lost = sum(s != State.SUCCESS for s in final.values())
    duplicated = sum(max(0, n - 1) for n in counts.values())
    report(
        "redis restarted empty",
        lost=lost,
        duplicated=duplicated,
        republished=republished,
        answers_ping_after=answered_ping,
        seconds_to_recover=time.monotonic() - restarted_at,
    )
    assert worker.proc.poll() is None  # never restarted
    # the same worker process ran what was left after the restart
    assert set(
        TaskRecord.objects.filter(pk__in=[r.pk for r in records]).values_list(
            "worker", flat=True
        )
    ) == {worker.hostname}
    assert lost == 0 and duplicated == 0
    assert counts == {f"restart-{i}": 1 for i in range(6)}
    assert republished >= 1


def test_redis_flushed_under_queued_tasks_they_are_republished_from_the_ledger(
    transactional_db, redis_db, private_redis, private_worker, settings
):
    settings.CLAW_REPUBLISH_PENDING_AFTER = 0
    with broker(URL):
        records = [
            services.submit("tests.effect", args=[f"flushed-{i}"], queue=QUEUE)
            for i in range(5)
        ]
        import redis

        redis.Redis.from_url(URL).flushdb()  # data loss before any worker ran
        vanished = maintenance.find_vanished()
        assert {r.pk for r in vanished} == {r.pk for r in records}
        private_worker("-c", "2")
        started = time.monotonic()
        republished = reconcile_until_final(records, 40)

    report(
        "redis flushed",
        lost=0,
        republished=republished,
        seconds_to_recover=time.monotonic() - started,
    )
    assert effects() == {f"flushed-{i}": 1 for i in range(5)}


def test_a_submission_while_redis_is_down_answers_promptly_and_runs_when_it_returns(
    transactional_db, redis_db, private_redis, private_worker, settings
):
    settings.CLAW_REPUBLISH_PENDING_AFTER = 0
    with broker(URL):
        private_worker("-c", "1")
        private_redis.kill()
        began = time.monotonic()
        with transaction.atomic():  # the request's transaction; publish on commit
            record = services.submit("tests.effect", args=["while-down"], queue=QUEUE)
        answered = time.monotonic() - began
        record.refresh_from_db()
        assert record.state == State.PENDING  # kept, not lost, not half-written

        private_redis.start()
        back = time.monotonic()
        republished = reconcile_until_final([record], 40)

    report(
        "submit while redis down",
        seconds_to_answer=answered,
        republished=republished,
        seconds_to_run_after_return=time.monotonic() - back,
    )
    assert answered < 5
    assert effects() == {"while-down": 1}
    assert republished == 1
