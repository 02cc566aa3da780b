"""The old system's task paths answer as thin routes onto the same views, with and
without the trailing slash, and a task is found by any of its Celery ids."""

from __future__ import annotations

import json
import os
import subprocess
from unittest.mock import patch

import pytest

from claw import conversations
from conftest import grant
from knowledge import services as knowledge
from knowledge.tests.conftest import add_ready
from tasks_app import rollups, services, tokens, workers
from tasks_app.models import TaskRecord
from tasks_app.tests.ledger_runs import run
from tasks_app.tests.test_api import client_for, record_of
from tests.harness import BASE_DIR
from writing import jobs
from writing.models import WritingJob

State = TaskRecord.State
pytestmark = pytest.mark.django_db


@pytest.fixture
def no_publish(monkeypatch):
    monkeypatch.setattr(services, "publish", lambda record, payload=None: None)


def both(path: str) -> list[str]:
    return [path, path + "/"]


@pytest.mark.parametrize("slash", ["", "/"])
def test_status_list_cancel_and_retry_answer_at_the_old_paths(alice, bob, slash):
    failed = record_of(alice, State.FAILURE)
    pending = record_of(alice, State.PENDING)
    api = client_for(alice)

    status = api.get(f"/api/v1/tasks/status/{failed.pk}{slash}")
    new_form = api.get(f"/api/v1/tasks/{failed.pk}/")
    by_celery_id = api.get(f"/api/v1/tasks/status/{failed.celery_id}{slash}")
    listed = api.get(f"/api/v1/tasks/list{slash}")
    with patch("tasks_app.services.app.send_task"):
        retried = api.post(f"/api/v1/tasks/retry/{failed.celery_id}{slash}")
    with patch("tasks_app.workers.revoke"):
        cancelled = api.post(f"/api/v1/tasks/cancel/{pending.pk}{slash}")
    not_theirs = client_for(bob).get(f"/api/v1/tasks/status/{failed.pk}{slash}")

    assert status.status_code == 200 and status.json()["id"] == failed.pk
    assert status.json() == new_form.json()
    assert by_celery_id.json()["id"] == failed.pk
    assert [r["id"] for r in listed.json()["results"]] == [pending.pk, failed.pk]
    assert retried.status_code == 202 and retried.json()["state"] == "PENDING"
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "REVOKED"
    assert not_theirs.status_code == 404


def test_a_task_is_found_by_an_earlier_attempts_celery_id(alice, bob):
    record = record_of(alice, State.FAILURE)
    first_id = record.celery_id
    with patch("tasks_app.services.app.send_task"):
        services.retry(record)
    record.refresh_from_db()
    assert record.celery_id != first_id
    api = client_for(alice)

    for path in (
        f"/api/v1/tasks/{first_id}/",
        f"/api/v1/tasks/{record.celery_id}/",
        f"/api/v1/tasks/status/{first_id}",
    ):
        response = api.get(path)
        assert response.status_code == 200, path
        assert response.json()["id"] == record.pk
    events = api.get(f"/api/v1/tasks/{first_id}/events/")
    assert [e["kind"] for e in events.json()["results"]] == ["queued", "queued"]
    assert client_for(bob).get(f"/api/v1/tasks/{first_id}/").status_code == 404
    assert api.get("/api/v1/tasks/no-such-celery-id/").status_code == 404


def test_the_list_filters_by_celery_id_of_any_attempt(alice):
    record = record_of(alice, State.FAILURE)
    other = record_of(alice, State.SUCCESS)
    first_id = record.celery_id
    with patch("tasks_app.services.app.send_task"):
        services.retry(record)
    record.refresh_from_db()
    api = client_for(alice)

    def ids(celery_id):
        response = api.get("/api/v1/tasks/", {"celery_id": celery_id})
        return [r["id"] for r in response.json()["results"]]

    assert ids(first_id) == [record.pk]
    assert ids(record.celery_id) == [record.pk]
    assert ids(other.celery_id) == [other.pk]
    assert ids("unknown") == []


@pytest.mark.parametrize("slash", ["", "/"])
def test_staff_paths_answer_at_the_old_paths(operator, alice, slash, settings):
    settings.CLAW_STATS_CACHE_SECONDS = 0
    run("succeeded", owner=alice)
    rollups.fold()
    api = client_for(operator)
    with patch("tasks_app.workers.queue_lengths", return_value={"default": 0}):
        stats = api.get(f"/api/v1/tasks/stats{slash}")
    with patch("tasks_app.workers.cluster", return_value=[]):
        listed = api.get(f"/api/v1/tasks/workers{slash}")
    answers = {"w1@host": {"ok": "reload started"}}
    with patch("tasks_app.workers.pool_restart", return_value=answers) as restart:
        restarted = api.post(f"/api/v1/tasks/workers/pool/restart{slash}")
    shutdown = api.post(
        f"/api/v1/tasks/workers/shutdown{slash}", {"worker": ""}, format="json"
    )

    assert stats.status_code == 200 and stats.json()["by_state"]["SUCCESS"] == 1
    assert listed.status_code == 200 and listed.json() == []
    assert restarted.status_code == 202 and restart.called
    assert restarted.json() == {"replies": answers}
    # the body reached the view: its field error, not a redirect
    assert shutdown.status_code == 400 and "worker" in shutdown.json()
    # still staff-only
    assert client_for(alice).get(f"/api/v1/tasks/stats{slash}").status_code == 403
    assert client_for(alice).get(f"/api/v1/tasks/workers{slash}").status_code == 403


@pytest.mark.parametrize("slash", ["", "/"])
def test_ai_generate_keeps_its_body_without_the_trailing_slash(
    alice, no_publish, slash
):
    chat = conversations.create_conversation(alice, title="chat")
    response = client_for(alice).post(
        f"/api/v1/tasks/ai/generate{slash}",
        {"conversation_id": chat.pk, "user_message": "Hello?"},
        format="json",
    )
    assert response.status_code == 202, response.content
    assert response.json()["task"]["name"] == "claw.generate_ai_response"


def test_old_paths_stay_out_of_the_schema(staff):
    schema = client_for(staff).get("/api/schema/").content.decode()
    assert "/api/v1/tasks/status/" not in schema
    assert "/api/v1/tasks/list" not in schema
    assert "/api/v1/tasks/workers" not in schema


def readme_curl_lines() -> list[str]:
    """The curl block of README's "Old API paths" section."""
    readme = (BASE_DIR / "README.md").read_text()
    section = readme.split("### Old API paths", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("curl ")]


def test_every_readme_curl_line_works_against_a_live_server(
    transactional_db, live_server, django_user_model, monkeypatch
):
    staff = grant(
        django_user_model.objects.create_user("old", is_staff=True),
        "tasks_app.control_workers",
    )
    _, key = tokens.issue(staff)
    failed = record_of(staff, State.FAILURE)
    queued = record_of(staff, State.PENDING)
    chat = conversations.create_conversation(staff, title="old client")
    answer = {"w1@host": {"ok": "done"}}
    monkeypatch.setattr(services, "publish", lambda record, payload=None: None)
    monkeypatch.setattr(workers, "revoke", lambda *args, **kwargs: None)
    monkeypatch.setattr(workers, "cluster", lambda timeout=None: [])
    monkeypatch.setattr(workers, "queue_lengths", lambda queues=None: {})
    monkeypatch.setattr(workers, "pool_restart", lambda destination=None: answer)
    monkeypatch.setattr(workers, "shutdown", lambda destination: answer)
    env = {
        **os.environ,
        "BASE": live_server.url,
        "TOKEN": key,
        "TASK": failed.celery_id,  # an old client holds Celery ids
        "QUEUED": str(queued.pk),
        "CHAT": str(chat.pk),
        "WORKER": "w1@host",
    }
    kb = knowledge.create_knowledge_base(staff, name="AI")
    add_ready(kb, "人工智能概述", "人工智能是计算机科学的一个分支。")
    lines = readme_curl_lines()
    assert len(lines) == 12

    bodies = []
    for line in lines:
        done = subprocess.run(
            ["bash", "-c", line], env=env, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, (line, done.stderr)
        bodies.append(json.loads(done.stdout))
        if "/jobs/outline" in line:  # what the worker would do before the next
            jobs.generate_outline(WritingJob.objects.get(job_id="test_job_001").pk)

    assert bodies[0]["id"] == failed.pk
    assert [r["id"] for r in bodies[2]["results"]] == [failed.pk]
    assert bodies[3]["state"] == "PENDING"  # retried
    assert bodies[4]["state"] == "REVOKED"  # cancelled
    assert bodies[5]["user_message"]["content"] == "你好"
    assert bodies[8] == bodies[9] == {"replies": answer}
    assert bodies[10]["job_id"] == "test_job_001" and bodies[10]["kind"] == "outline"
    assert bodies[11]["job_id"] == "test_doc_001" and bodies[11]["kind"] == "document"
