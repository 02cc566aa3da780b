"""Faults of worker processes: kill -9, poison tasks, SIGTERM, cancel while down."""

from __future__ import annotations

import os
import signal
import time

import pytest
from django.conf import settings

from claw.celery import app
from tasks_app import services
from tasks_app.models import TaskRecord
from tests.harness import wait_for
from tests.reliability.conftest import (
    QUEUE,
    effects,
    report,
    states,
    submit_effect,
    wait_final,
    wait_state,
)

pytestmark = [pytest.mark.reliability, pytest.mark.worker]
State = TaskRecord.State


def running_pid(worker, celery_id: str) -> int:
    def find():
        active = app.control.inspect(destination=[worker.hostname], timeout=1).active()
        for task in (active or {}).get(worker.hostname, []):
            if task["id"] == celery_id:
                return task["worker_pid"]
        return None

    return wait_for(find, 20, interval=0.2, message=f"{celery_id} to run")


def test_killing_a_worker_child_mid_task_redelivers_it_and_the_effect_happens_once(
    transactional_db, redis_db, fault_worker
):
    worker = fault_worker("-c", "2")
    record = submit_effect("child-kill", seconds=3)
    wait_state(record, State.STARTED, 20)
    pid = running_pid(worker, record.celery_id)
    assert pid in worker.child_pids()  # only a pid this test started

    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    recovered = wait_final([record], 40)

    record.refresh_from_db()
    report(
        "kill -9 child",
        lost=0,
        duplicated=effects()["child-kill"] - 1,
        seconds_to_recover=time.monotonic() - killed_at,
    )
    assert record.state == State.SUCCESS
    assert record.deliveries == 2
    assert effects() == {"child-kill": 1}
    assert recovered < 40


def test_a_task_that_kills_its_process_every_time_stops_in_failure_while_others_flow(
    transactional_db, redis_db, fault_worker
):
    worker = fault_worker("-c", "2")
    started = time.monotonic()
    poison = services.submit("tests.kill_self", queue=QUEUE)
    others = [submit_effect(f"flow-{i}", seconds=0.2) for i in range(6)]

    wait_final([poison, *others], 90)

    poison.refresh_from_db()
    limit = 1 + settings.CLAW_MAX_REDELIVERIES  # kill_self has max_retries=0
    report(
        "poison task",
        deliveries=poison.deliveries,
        others_done=sum(s == State.SUCCESS for s in states(others).values()),
        seconds=time.monotonic() - started,
    )
    assert poison.state == State.FAILURE
    assert "Stopped after" in poison.error
    assert poison.deliveries == limit
    assert set(states(others).values()) == {State.SUCCESS}
    assert effects() == {f"flow-{i}": 1 for i in range(6)}
    assert worker.proc.poll() is None  # the worker itself survived


def test_a_task_cancelled_while_every_worker_is_down_never_runs_after_they_return(
    transactional_db, redis_db, fault_worker
):
    record = submit_effect("cancelled-while-down")
    services.cancel(record)
    assert TaskRecord.objects.get(pk=record.pk).state == State.REVOKED

    fault_worker("-c", "1")  # a fresh worker: Celery's in-memory revoke list is empty
    marker = submit_effect("after-restart")
    wait_final([marker], 30)

    record.refresh_from_db()
    kinds = list(record.events.values_list("kind", flat=True))
    report("cancel while down", ran=effects().get("cancelled-while-down", 0))
    assert effects() == {"after-restart": 1}
    assert record.state == State.REVOKED and "started" not in kinds


def test_killing_the_worker_main_process_with_20_tasks_in_flight_loses_and_doubles_none(
    transactional_db, redis_db, fault_worker, settings
):
    # Beat's health check re-publishes what the broker itself lost; here it runs
    # every 5 s and re-publishes after 10 s instead of 300.
    settings.CLAW_REPUBLISH_PENDING_AFTER = 10
    worker = fault_worker("-c", "4")
    records = [submit_effect(f"inflight-{i}", seconds=1.5) for i in range(20)]
    wait_for(
        lambda: list(states(records).values()).count(State.STARTED) >= 3,
        30,
        message="several tasks to run",
    )
    worker.kill(signal.SIGKILL)  # main process and its pool children, our pids only
    worker.proc.wait(10)
    killed_at = time.monotonic()
    in_flight = list(states(records).values()).count(State.STARTED)

    fault_worker("-c", "4")  # the restart
    wait_final(records, 120, heal_every=5)

    counts = effects()
    final = states(records)
    lost = sum(state != State.SUCCESS for state in final.values())
    duplicated = sum(max(0, counts.get(f"inflight-{i}", 0) - 1) for i in range(20))
    report(
        "kill -9 main",
        in_flight_at_kill=in_flight,
        lost=lost,
        duplicated=duplicated,
        seconds_to_recover=time.monotonic() - killed_at,
    )
    assert in_flight >= 1
    assert lost == 0 and duplicated == 0
    assert counts == {f"inflight-{i}": 1 for i in range(20)}


def test_sigterm_lets_the_running_task_finish_and_returns_reserved_ones_at_once(
    transactional_db, redis_db, fault_worker
):
    from tasks_app.broker_inspect import redis_queue_keys
    from tests.tasks import redis_client

    # A visibility timeout far above the test: messages coming back "at once"
    # cannot be the broker's timeout redelivery.
    slow_env = {
        "CELERY_VISIBILITY_TIMEOUT": "300",
        "CELERY_UNACKED_RESTORE_INTERVAL": "300",
    }
    worker = fault_worker("-c", "1", "--prefetch-multiplier", "4", env=slow_env)
    running = submit_effect("sigterm-running", seconds=4)
    wait_state(running, State.STARTED, 20)
    reserved = [submit_effect(f"sigterm-reserved-{i}") for i in range(3)]
    client = redis_client()

    def queue_length() -> int:
        return sum(client.llen(key) for key in redis_queue_keys([QUEUE]))

    wait_for(lambda: queue_length() == 0, 10, message="the worker to reserve all")

    os.kill(worker.pid, signal.SIGTERM)  # warm shutdown of the pid we started
    sent_at = time.monotonic()
    worker.proc.wait(30)
    exited_after = time.monotonic() - sent_at
    back_in_queue = queue_length()

    running.refresh_from_db()
    assert running.state == State.SUCCESS
    assert effects() == {"sigterm-running": 1}
    assert back_in_queue == 3
    assert set(states(reserved).values()) == {State.PENDING}

    fault_worker("-c", "2", env=slow_env)
    wait_final(reserved, 30)
    report(
        "SIGTERM",
        running_finished=True,
        returned_to_queue=back_in_queue,
        seconds_to_exit=exited_after,
        seconds_from_sigterm_until_returned_ran=time.monotonic() - sent_at,
    )
    assert effects() == {
        "sigterm-running": 1,
        **{f"sigterm-reserved-{i}": 1 for i in range(3)},
    }


def test_a_sweep_lock_left_by_a_killed_worker_lapses_in_seconds_not_five_minutes(
    redis_db,
):
    # kombu's unacked sweep takes a Redis lock that a worker killed mid-sweep
    # never releases; with kombu's default 300 s expiry no worker restores a
    # dead worker's messages for five minutes.
    from kombu.transport.redis import Mutex

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        # a key of its own: a live worker's sweep may hold the real one now
        key = channel.unacked_mutex_key + ":probe"
        with Mutex(redis_db, key, channel.unacked_mutex_expire):
            ttl = redis_db.ttl(key)
    assert (
        channel.unacked_mutex_expire
        == settings.CELERY_BROKER_TRANSPORT_OPTIONS["unacked_mutex_expire"]
    )
    assert 0 < ttl <= 30
