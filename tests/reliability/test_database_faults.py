"""PostgreSQL restarted while tasks run, on a private server.

The shared PostgreSQL runs other engineers' tests, so this starts its own cluster
(initdb + pg_ctl as the postgres user, loopback port 5440, a temp folder), loads
the test database's schema into it, and restarts that one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

import pytest
from django.db import connection

from bench import private
from bench.private import pg_bin
from tasks_app import maintenance, services
from tasks_app.models import TaskRecord
from tests.reliability.conftest import QUEUE, effects, report, states

pytestmark = [pytest.mark.reliability, pytest.mark.worker]
State = TaskRecord.State
PORT = 5440
NAME = "claw_reliability"


class PrivatePostgres(private.Postgres):
    """bench.private's cluster on PORT, holding a copy of the test database's schema."""

    def __init__(self):
        super().__init__(PORT)

    def init(self) -> PrivatePostgres:
        super().init(NAME)
        return self

    def load_schema_of(self, settings_dict: dict) -> None:
        psql = [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres"]
        dump = subprocess.run(
            [
                pg_bin("pg_dump"),
                "--schema-only",
                "--no-owner",
                "-h",
                settings_dict["HOST"] or "127.0.0.1",
                "-p",
                str(settings_dict["PORT"] or 5432),
                "-U",
                settings_dict["USER"],
                settings_dict["NAME"],
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PGPASSWORD": settings_dict.get("PASSWORD") or ""},
        ).stdout
        subprocess.run(
            [*psql, "-q", "-d", NAME],
            input=dump,
            text=True,
            check=True,
            capture_output=True,
            timeout=60,
        )


@contextlib.contextmanager
def database(host: str, port: int, name: str):
    """Point this process's default connection at another server, then back."""
    saved = {k: connection.settings_dict[k] for k in ("HOST", "PORT", "NAME")}
    connection.close()
    connection.settings_dict.update(HOST=host, PORT=port, NAME=name)
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.update(saved)


def with_reconnect(call):
    try:
        return call()
    except Exception:  # the server restarted under this process's connection
        connection.close()
        return None


def settle(records, timeout: float = 90) -> tuple[dict, list | None]:
    """Wait (running the health check, as beat would) until every record is final,
    reconnecting as the server comes back; (state by record, the (state, error)
    of those that did not succeed)."""
    final = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        final = with_reconnect(lambda: states(records)) or {}
        if final and all(s in TaskRecord.FINAL_STATES for s in final.values()):
            break
        with_reconnect(lambda: maintenance.check_health(alerts_enabled=False))
        time.sleep(1)
    errors = with_reconnect(
        lambda: list(
            TaskRecord.objects.filter(pk__in=[r.pk for r in records])
            .exclude(state=TaskRecord.State.SUCCESS)
            .values_list("state", "error")
        )
    )
    return final, errors


def test_postgresql_restarted_while_tasks_run_every_record_reaches_a_final_state(
    transactional_db, redis_db, fault_worker
):
    server = PrivatePostgres().init()
    try:
        server.load_schema_of(connection.settings_dict)
        url = f"postgres://postgres@127.0.0.1:{PORT}/{NAME}"
        with database("127.0.0.1", PORT, NAME):
            worker = fault_worker("-c", "2", env={"DATABASE_URL": url})
            records = [
                services.submit(
                    "tests.bounded_effect", args=[f"pg-{i}", 1.0], queue=QUEUE
                )
                for i in range(8)
            ]
            deadline = time.monotonic() + 20
            while list(states(records).values()).count(State.SUCCESS) < 2:
                assert time.monotonic() < deadline, "tasks did not start"
                time.sleep(0.2)

            server.stop()
            restarted_at = time.monotonic()
            server.start()
            connection.close()

            final, errors = settle(records)
            recovered = time.monotonic() - restarted_at
    finally:
        server.remove()

    counts = effects()
    report(
        "postgresql restarted",
        states=sorted(final.values()),
        duplicated=sum(max(0, n - 1) for n in counts.values()),
        missing_effects=sum(1 for i in range(8) if not counts.get(f"pg-{i}")),
        seconds_to_recover=recovered,
        not_succeeded=errors,
    )
    assert worker.proc.poll() is None  # the worker was never restarted
    assert len(final) == 8
    assert all(s in TaskRecord.FINAL_STATES for s in final.values())
    # Every task ran exactly once...
    assert counts == {f"pg-{i}": 1 for i in range(8)}
    # ...and every one ends SUCCESS: storing a result retries through the restart
    # (LedgerBackend.exception_safe_to_retry), so finished work is never FAILURE.
    assert errors == []
