"""One beat only: a second beat process waits on the lease and sends nothing."""

from __future__ import annotations

import socket
import time

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from tasks_app.models import BeatLease, TaskRecord
from tests.harness import wait_for
from tests.reliability.conftest import QUEUE, report

pytestmark = [pytest.mark.reliability]


def test_a_second_beat_does_not_send_while_the_first_holds_the_lease(
    transactional_db, redis_db, start_beat
):
    PeriodicTask.objects.update(enabled=False)
    every_second, _ = IntervalSchedule.objects.get_or_create(
        every=1, period=IntervalSchedule.SECONDS
    )
    PeriodicTask.objects.create(
        name="reliability: every second",
        task="tests.effect",
        args='["beat-tick"]',
        interval=every_second,
        queue=QUEUE,
    )
    PeriodicTasks.update_changed()
    sent = TaskRecord.objects.filter(name="tests.effect", queue=QUEUE)

    beats = [start_beat(), start_beat()]
    # Log files are appended across runs: read only what these processes write.
    offsets = {beat: beat.log_path.stat().st_size for beat in beats}
    wait_for(lambda: sent.count() >= 1, 40, message="the first periodic send")
    first_at = time.monotonic()
    wait_for(lambda: sent.count() >= 6, 30, message="six periodic sends")
    window = time.monotonic() - first_at
    count = sent.count()

    holder = BeatLease.objects.get(pk=1).holder
    host = socket.gethostname()
    by_holder = {f"{host}:{beat.pid}": beat for beat in beats}
    assert holder in by_holder
    leader = by_holder[holder]
    standby = next(beat for beat in beats if beat is not leader)
    sends = {
        beat: beat.log_path.read_bytes()[offsets[beat] :]
        .decode(errors="replace")
        .count("Sending due task reliability")
        for beat in beats
    }
    report(
        "two beats",
        sends_by_leader=sends[leader],
        sends_by_standby=sends[standby],
        records=count,
        seconds=window,
    )
    assert sends[standby] == 0
    assert sends[leader] >= 6
    # One send per second of the window (plus the ones in flight), not two.
    assert count <= window + 3
