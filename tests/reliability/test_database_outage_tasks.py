"""Tasks running through a 20 s PostgreSQL outage (longer than the ledger's
own ~15 s of reconnecting), on the private server of test_database_faults.

Each task reports progress every 0.25 s for about 6 s, so its body writes to the
database while it is down; every task must still end SUCCESS
(tasks_app.retries.ride_out_database_outage runs the body again once the
database is back).
"""

from __future__ import annotations

import time

import pytest
from django.db import connection

from tasks_app import services
from tasks_app.models import TaskRecord
from tests.reliability.conftest import QUEUE, report, states
from tests.reliability.test_database_faults import (
    NAME,
    PORT,
    PrivatePostgres,
    database,
    settle,
    with_reconnect,
)

pytestmark = [pytest.mark.reliability, pytest.mark.worker]
OUTAGE = 20  # seconds


def started(records) -> int:
    found = with_reconnect(lambda: states(records)) or {}
    return list(found.values()).count(TaskRecord.State.STARTED)


def test_tasks_writing_to_the_database_ride_out_a_20_second_outage(
    transactional_db, redis_db, fault_worker
):
    server = PrivatePostgres().init()
    try:
        server.load_schema_of(connection.settings_dict)
        url = f"postgres://postgres@127.0.0.1:{PORT}/{NAME}"
        with database("127.0.0.1", PORT, NAME):
            worker = fault_worker("-c", "2", env={"DATABASE_URL": url})
            records = [
                services.submit("tests.progress_loop", args=[24, 0.25], queue=QUEUE)
                for _ in range(4)
            ]
            deadline = time.monotonic() + 20
            while started(records) < 1:
                assert time.monotonic() < deadline, "tasks did not start"
                time.sleep(0.1)

            server.stop()
            time.sleep(OUTAGE)
            server.start()
            connection.close()
            restarted_at = time.monotonic()

            final, errors = settle(records)
            recovered = time.monotonic() - restarted_at
    finally:
        server.remove()

    report(
        "tasks through a 20 s postgresql outage",
        states=sorted(final.values()),
        seconds_after_restart=recovered,
        not_succeeded=errors,
    )
    assert worker.proc.poll() is None
    assert errors == []
