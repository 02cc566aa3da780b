"""Beat through a PostgreSQL restart, on the private server of test_database_faults.

Celery's beat exits when its scheduler raises; the leader lease's query meets a
dead connection first after a restart. Beat must keep running and send again
once the database is back.
"""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from tasks_app.models import TaskRecord
from tests.harness import wait_for
from tests.reliability.conftest import QUEUE, report
from tests.reliability.test_database_faults import (
    NAME,
    PORT,
    PrivatePostgres,
    database,
    with_reconnect,
)

pytestmark = [pytest.mark.reliability]
OUTAGE = 4  # seconds


def sent() -> int:
    return (
        with_reconnect(
            lambda: TaskRecord.objects.filter(name="tests.effect", queue=QUEUE).count()
        )
        or 0
    )


def test_beat_keeps_running_through_a_postgresql_restart_and_sends_again(
    transactional_db, redis_db, start_beat
):
    server = PrivatePostgres().init()
    try:
        server.load_schema_of(connection.settings_dict)
        url = f"postgres://postgres@127.0.0.1:{PORT}/{NAME}"
        with database("127.0.0.1", PORT, NAME):
            every_second = IntervalSchedule.objects.create(
                every=1, period=IntervalSchedule.SECONDS
            )
            PeriodicTask.objects.create(
                name="reliability: beat through a restart",
                task="tests.effect",
                args='["beat-restart"]',
                interval=every_second,
                queue=QUEUE,
            )
            PeriodicTasks.update_changed()
            beat = start_beat(env={"DATABASE_URL": url})
            wait_for(lambda: sent() >= 2, 40, message="two periodic sends")

            server.stop()
            time.sleep(OUTAGE)
            alive_in_outage = beat.proc.poll() is None
            server.start()
            connection.close()
            restarted_at = time.monotonic()
            before = sent()
            wait_for(
                lambda: beat.proc.poll() is not None or sent() >= before + 2,
                40,
                message="two sends after the restart",
            )
            after = sent()
            resumed = time.monotonic() - restarted_at
    finally:
        server.remove()

    log = beat.log_path.read_text(errors="replace")
    report(
        "beat through a postgresql restart",
        alive_in_outage=alive_in_outage,
        exit_code=beat.proc.poll(),
        sends_before=before,
        sends_after=after,
        seconds_to_resume=resumed,
    )
    assert beat.proc.poll() is None, log[-2000:]
    assert alive_in_outage
    assert after >= before + 2
