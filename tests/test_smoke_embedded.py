"""The whole path on the embedded stack: SQLite + Celery's filesystem broker.

Everything runs in subprocesses with a clean environment, as `make run` would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from claw.celery import app as test_app
from tests.harness import BASE_DIR, CeleryProcess

SUBMIT_AND_WAIT = """
import json, time
from django_celery_results.models import TaskResult
from claw.celery import app
from tasks_app import services, workers
record = services.submit("tasks_app.ping")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    record.refresh_from_db()
    if record.is_final:
        break
    time.sleep(0.2)
result = TaskResult.objects.filter(task_id=record.celery_id).first()
print(json.dumps({
    "state": record.state,
    "events": list(record.events.values_list("kind", flat=True)),
    "result": result and json.loads(result.result),
    "ping": workers.ping(timeout=2),
}))
"""


SUBMIT_MANY_AND_WAIT = """
import json, time
from django.db import transaction
from tasks_app import services
with transaction.atomic():
    records = services.submit_many(
        [services.Submission("tasks_app.ping") for _ in range(5)]
    )
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    for record in records:
        record.refresh_from_db()
    if all(record.is_final for record in records):
        break
    time.sleep(0.2)
print(json.dumps({
    "states": [record.state for record in records],
    "events": [list(r.events.values_list("kind", flat=True)) for r in records],
}))
"""


def embedded_env(var_dir) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return {
        **keep,
        "CLAW_VAR_DIR": str(var_dir),
        "SECRET_KEY": "embedded-smoke-test-key-0123456789-abcdefghijklmnop",
        "DJANGO_SETTINGS_MODULE": "claw.settings",
        "PYTHONUNBUFFERED": "1",
    }


def manage(env, *args, timeout=120) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.worker
def test_submitted_task_runs_and_stores_its_result_on_sqlite_and_filesystem_broker(
    tmp_path,
):
    env = embedded_env(tmp_path)
    manage(env, "migrate", "--noinput")
    worker = CeleryProcess("worker", env, ["-c", "2"], tmp_path / "worker.log").start()
    try:
        # The parent's app talks to Redis; ask the worker over its own broker.
        out = manage(env, "shell", "-c", SUBMIT_AND_WAIT)
        # submit_many on SQLite (a savepoint per record) and the filesystem
        # broker (no publish batches: one message at a time)
        many = manage(env, "shell", "-c", SUBMIT_MANY_AND_WAIT)
    finally:
        worker.stop()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["state"] == "SUCCESS", worker.tail()
    assert report["result"] == "pong"
    assert report["events"] == ["queued", "started", "succeeded"]
    assert worker.hostname in report["ping"]  # broadcast works on the filesystem broker
    bulk = json.loads(many.strip().splitlines()[-1])
    assert bulk["states"] == ["SUCCESS"] * 5, worker.tail()
    assert bulk["events"] == [["queued", "started", "succeeded"]] * 5
    assert (tmp_path / "claw.sqlite3").exists()
    assert test_app.conf.broker_url.startswith("redis")  # the parent stayed on Redis
