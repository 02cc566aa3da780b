"""The embedded stack (SQLite + filesystem broker): a worker killed mid-task.

The filesystem broker has no acknowledgements: the message of a task a killed
worker was running is gone from the broker folder. The ledger still knows the
record, and check_task_health re-queues it once its hard time limit has passed.
Everything runs in subprocesses on the embedded stack, as `make run` would.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from django.conf import settings

from tests.harness import CeleryProcess
from tests.reliability.conftest import effects, report
from tests.test_smoke_embedded import manage

pytestmark = [pytest.mark.reliability, pytest.mark.worker]

SUBMIT = """
import time
from tasks_app import services
record = services.submit("tests.bounded_effect", args=["embedded-kill", 4.0])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    record.refresh_from_db()
    if record.state == "STARTED":
        break
    time.sleep(0.1)
print(record.pk, record.state)
"""

RECONCILE = """
import json, time
from tasks_app import maintenance
from tasks_app.models import TaskRecord
record = TaskRecord.objects.get(pk=PK)
deadline = time.monotonic() + 60
checks = []
while time.monotonic() < deadline:
    record.refresh_from_db()
    if record.is_final:
        break
    checks.append(maintenance.check_health(alerts_enabled=False))
    time.sleep(1)
print(json.dumps({
    "state": record.state,
    "events": list(record.events.values_list("kind", flat=True)),
    "lost": sum(len(c["lost"]) for c in checks),
    "requeued": sum(len(c["requeued"]) for c in checks),
}))
"""


def last_line(env, *args, timeout=120) -> str:
    return manage(env, *args, timeout=timeout).strip().splitlines()[-1]


def test_a_task_whose_worker_is_killed_on_the_filesystem_broker_is_requeued_by_health(
    tmp_path, redis_db
):
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env = {
        **keep,
        "CLAW_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'claw.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://",
        "DJANGO_SETTINGS_MODULE": "claw.test_settings",  # loads tests.tasks
        "CLAW_TEST_EFFECTS_URL": settings.CELERY_BROKER_URL,
        "PYTHONUNBUFFERED": "1",
    }
    manage(env, "migrate", "--noinput")
    log = tmp_path / "worker.log"
    worker = CeleryProcess("worker", env, ["-c", "1"], log).start()
    try:
        pk, state = last_line(env, "shell", "-c", SUBMIT).split()
        assert state == "STARTED", worker.tail()
        worker.kill(signal.SIGKILL)  # the whole group we started
        worker.proc.wait(10)
        killed_at = time.monotonic()
        worker = CeleryProcess("worker", env, ["-c", "1"], log).start()
        result = json.loads(
            last_line(env, "shell", "-c", RECONCILE.replace("PK", pk), timeout=90)
        )
    finally:
        worker.stop()

    report(
        "embedded kill -9",
        state=result["state"],
        lost=result["lost"],
        requeued=result["requeued"],
        effects=effects().get("embedded-kill", 0),
        seconds_to_recover=time.monotonic() - killed_at,
    )
    assert result["state"] == "SUCCESS"
    assert result["lost"] == 1 and result["requeued"] == 1
    assert "lost" in result["events"]
    assert effects() == {"embedded-kill": 1}
