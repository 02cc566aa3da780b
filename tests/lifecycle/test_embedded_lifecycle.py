"""The main lifecycle paths on the embedded stack (SQLite + filesystem broker):
success, failure after automatic retries, cancel while queued. One worker, all
in subprocesses with a clean environment (helpers from the embedded smoke test).
"""

from __future__ import annotations

import json

import pytest

from tests.harness import CeleryProcess
from tests.test_smoke_embedded import embedded_env, manage

LIFECYCLE = """
import json, time
from django_celery_results.models import TaskResult
from tasks_app import services
ok = services.submit("tests.add", args=[2, 40])
flaky = services.submit("tests.always_flaky")
queued = services.submit("tests.add", args=[1, 1], countdown=3600)
services.cancel(queued)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    for record in (ok, flaky):
        record.refresh_from_db()
    if ok.is_final and flaky.is_final:
        break
    time.sleep(0.2)
queued.refresh_from_db()
def report(record):
    result = TaskResult.objects.filter(task_id=record.celery_id).first()
    return {
        "state": record.state,
        "attempts": record.attempts,
        "traceback": record.traceback,
        "events": list(record.events.values_list("kind", flat=True)),
        "result": result and json.loads(result.result),
    }
print(json.dumps({"ok": report(ok), "flaky": report(flaky), "queued": report(queued)}))
"""


@pytest.mark.worker
def test_success_failure_and_cancel_on_sqlite_and_the_filesystem_broker(tmp_path):
    env = {**embedded_env(tmp_path), "DJANGO_SETTINGS_MODULE": "claw.test_settings"}
    # test_settings supplies the test tasks; these keep it on the embedded stack.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'claw.sqlite3'}"
    env["CELERY_BROKER_URL"] = "filesystem://"
    manage(env, "migrate", "--noinput")
    worker = CeleryProcess("worker", env, ["-c", "2"], tmp_path / "worker.log").start()
    try:
        out = manage(env, "shell", "-c", LIFECYCLE)
    finally:
        worker.stop()
    report = json.loads(out.strip().splitlines()[-1])

    ok, flaky, queued = report["ok"], report["flaky"], report["queued"]
    assert ok["state"] == "SUCCESS", worker.tail()
    assert ok["result"] == 42
    assert ok["events"] == ["queued", "started", "succeeded"]
    assert flaky["state"] == "FAILURE", worker.tail()
    assert flaky["attempts"] == 3
    assert "Flaky" in flaky["traceback"]
    assert flaky["events"].count("retry") == 2
    assert flaky["events"][-1] == "failed"
    assert queued["state"] == "REVOKED"
    assert queued["events"] == ["queued", "cancelled"]
    assert queued["attempts"] == 0
