"""Streams that lose Redis mid-reply, and streams on the embedded stack."""

from __future__ import annotations

import json
import time

import pytest
import redis
from django.conf import settings

from bench.private import Redis
from claw import conversations
from claw.tests.conftest import ScriptedServer, sse
from tests.harness import CeleryProcess
from tests.streams.conftest import (
    AsgiServer,
    SSEClient,
    close_stream,
    free_port,
    open_stream,
)
from tests.streams.test_reply_stream import ANSWER, PIECES, ask, read_until, token
from tests.test_smoke_embedded import embedded_env, manage

pytestmark = pytest.mark.worker


def kill_hub_connections(pid: int) -> int:
    """Drop the streams server's Redis subscription, as a Redis restart does."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    killed = 0
    for entry in client.client_list(_type="pubsub"):
        if entry["name"] == f"claw-live-hub-{pid}":
            client.client_kill_filter(_id=entry["id"])
            killed += 1
    return killed


def test_a_stream_survives_losing_redis_mid_reply(alice, llm, asgi_server):
    llm.script.append(sse(*PIECES, pause=0.2))
    reply = ask(alice)
    response = open_stream(
        asgi_server.url, f"/api/v1/messages/{reply.pk}/stream/", token(alice)
    )
    try:
        client = SSEClient(response)
        before = read_until(client, lambda evs: evs[-1].event == "delta")
        assert kill_hub_connections(asgi_server.process.pid) == 1
        rest = list(client)
    finally:
        close_stream(response)
    reply.refresh_from_db()
    text = "".join(e.data["text"] for e in before + rest if e.event == "delta")
    assert rest[-1].event == "done"
    assert text == reply.content == ANSWER


EMBEDDED_SETUP = """
import json
from django.contrib.auth import get_user_model
from bench.private import Redis
from claw import conversations
from tasks_app import tokens
user = get_user_model().objects.create_user("eve", password="x-pass-123")
conversation = conversations.create_conversation(user, provider="openai")
reply = conversations.post_message(conversation, "hello?").assistant_message
print(json.dumps({"token": tokens.issue(user)[1],
                  "message": reply.pk, "task": reply.task_id}))
"""


def test_streams_on_the_embedded_stack_read_the_database(tmp_path, artifacts_dir):
    env = {**embedded_env(tmp_path), "DJANGO_SETTINGS_MODULE": "claw.test_settings"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'claw.sqlite3'}"
    env["CELERY_BROKER_URL"] = "filesystem://"
    env["AI_RATE_LIMIT"] = ""
    manage(env, "migrate", "--noinput")
    with ScriptedServer() as model:
        model.script.append(sse(*PIECES, pause=0.2))
        env.update(LLM_BASE_URL=model.url + "/v1", AI_STREAM_SAVE_INTERVAL="0.2")
        server = AsgiServer(env, tmp_path / "uvicorn.log")
        worker = CeleryProcess("worker", env, ["-c", "1"], tmp_path / "worker.log")
        try:
            server.wait_ready()
            created = json.loads(
                manage(env, "shell", "-c", EMBEDDED_SETUP).splitlines()[-1]
            )
            worker.start()
            started = time.monotonic()
            response = open_stream(
                server.url,
                f"/api/v1/messages/{created['message']}/stream/",
                created["token"],
            )
            try:
                events = list(SSEClient(response))
            finally:
                close_stream(response)
            tasks = open_stream(
                server.url, f"/api/v1/tasks/{created['task']}/stream/", created["token"]
            )
            try:
                task_events = [e.event for e in SSEClient(tasks)]
            finally:
                close_stream(tasks)
        finally:
            worker.stop()
            server.stop()
    deltas = [e for e in events if e.event == "delta"]
    assert events[-1].event == "done", (tmp_path / "worker.log").read_text()[-2000:]
    assert len(deltas) >= 2  # the text as it was saved, before the end
    assert deltas[0].at < events[-1].at
    assert "".join(d.data["text"] for d in deltas) == ANSWER
    assert task_events[0] == "task_queued" and task_events[-1] == "task_completed"
    assert time.monotonic() - started < 30


def test_a_stream_completes_when_redis_restarts_mid_reply(
    alice, llm, worker_env, artifacts_dir
):
    # The live path (worker -> Redis -> streams server) through a Redis that is
    # killed and started again while the reply streams; the broker stays up.
    # No persistence: the restart loses everything the live path had in Redis.
    private = Redis(free_port(), artifacts_dir, appendonly=False).start()
    env = {**worker_env, "CLAW_LIVE_REDIS_URL": private.url, "CLAW_LIVE_HEARTBEAT": "1"}
    server = AsgiServer(env, artifacts_dir / "uvicorn-restart.log")
    from claw.celery import app

    worker = CeleryProcess(
        "worker",
        {**env, "LLM_BASE_URL": llm.url + "/v1", "AI_RATE_LIMIT": "",
         "AI_STREAM_SAVE_INTERVAL": "30"},
        ["-Q", "live_restart", "-c", "1"],
        artifacts_dir / "worker-restart.log",
    )  # fmt: skip
    try:
        server.wait_ready()
        worker.start().wait_ready(app)
        llm.script.append(sse(*PIECES, pause=0.25))
        conversation = conversations.create_conversation(alice, provider="openai")
        reply = conversations.post_message(
            conversation, "?", queue="live_restart"
        ).assistant_message
        response = open_stream(
            server.url, f"/api/v1/messages/{reply.pk}/stream/", token(alice)
        )
        try:
            client = SSEClient(response)
            before = read_until(client, lambda evs: evs[-1].event == "delta")
            private.kill()
            time.sleep(0.5)
            private.start()
            rest = list(client)
        finally:
            close_stream(response)
    finally:
        worker.stop()
        server.stop()
        private.kill()
    reply.refresh_from_db()
    assert rest[-1].event == "done"
    text = "".join(e.data["text"] for e in before + rest if e.event == "delta")
    assert text == reply.content == ANSWER


def test_a_quiet_stream_sends_heartbeats(bob, llm, asgi_server):
    # the suite's server sends one after each quiet second (CLAW_LIVE_HEARTBEAT=1)
    response = open_stream(asgi_server.url, "/api/v1/events/stream/", token(bob))
    started = time.monotonic()
    try:
        assert response.status_code == 200
        lines = response.iter_lines()
        while next(lines) != ": keep-alive":
            assert time.monotonic() - started < 5
    finally:
        close_stream(response)
    assert 0.5 < time.monotonic() - started < 5
