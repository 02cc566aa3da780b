"""A threads-pool worker keeps logging after its first task (received,
succeeded): the AI worker of `make run` (SQLite + the filesystem broker) went
silent after it, because a task's first call of registered_tasks() imported the
task modules again, and Celery's Django fixup then ran django.setup(), which
reapplied LOGGING while sys.stderr was the worker's logging proxy."""

from __future__ import annotations

import json

import pytest

from tests.harness import CeleryProcess
from tests.test_smoke_embedded import embedded_env, manage

pytestmark = pytest.mark.worker

# Three pings one after another on the AI queue; prints their Celery ids.
PING_THREE = """
import json, time
from tasks_app import services
ids = []
for _ in range(3):
    record = services.submit("tasks_app.ping", queue="ai_high_priority")
    deadline = time.monotonic() + 30
    while not record.is_final and time.monotonic() < deadline:
        time.sleep(0.1)
        record.refresh_from_db()
    ids.append([record.celery_id, record.state])
print(json.dumps(ids))
"""


def test_a_threads_worker_logs_every_task_not_only_the_first(tmp_path):
    env = embedded_env(tmp_path)
    manage(env, "migrate", "--noinput")
    log = tmp_path / "worker.log"
    worker = CeleryProcess(
        "worker",
        env,
        ["-Q", "ai_high_priority", "--pool", "threads", "-c", "2"],
        log,
    ).start()
    try:
        ran = json.loads(manage(env, "shell", "-c", PING_THREE).splitlines()[-1])
    finally:
        worker.stop()
    text = log.read_text(errors="replace")
    assert [state for _, state in ran] == ["SUCCESS"] * 3, worker.tail()
    for celery_id, _ in ran:
        assert f"[{celery_id}] received" in text
        assert f"[{celery_id}] succeeded" in text
