"""Replies streamed to SSE clients, end to end: the scripted OpenAI-compatible
server streams an answer to a real Celery worker, which publishes each chunk
through Redis to a real uvicorn process serving claw.asgi, read here over HTTP.

The worker saves the text only every 30 s (AI_STREAM_SAVE_INTERVAL), far longer
than a reply takes: every delta seen before the end came from the live path,
not from the database.
"""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token

from claw import conversations
from claw.models import Message
from claw.tests.conftest import ScriptedServer, sse
from tests.harness import CeleryProcess, wait_for
from tests.streams.conftest import SSEClient, close_stream, open_stream

pytestmark = pytest.mark.worker
QUEUE = "live_llm"
PIECES = [f"word{n} " for n in range(12)]
ANSWER = "".join(PIECES)
PAUSE = 0.15  # between chunks: the whole answer takes about 2 s


@pytest.fixture(scope="module")
def llm_server():
    with ScriptedServer() as server:
        yield server


@pytest.fixture(scope="module")
def llm_worker(worker_env, artifacts_dir, llm_server):
    from claw.celery import app

    env = {
        **worker_env,
        "LLM_BASE_URL": llm_server.url + "/v1",
        "LLM_MODEL": "test-model",
        "AI_RATE_LIMIT": "",
        "AI_STREAM_SAVE_INTERVAL": "30",
    }
    worker = CeleryProcess(
        "worker", env, ["-Q", QUEUE, "-c", "2"], artifacts_dir / "worker-live.log"
    )
    with worker.running(app):
        yield worker


@pytest.fixture
def llm(llm_server, llm_worker, asgi_server, transactional_db):
    llm_server.script.clear()
    llm_server.requests.clear()
    return llm_server


def ask(user, content="What is CLAW?") -> Message:
    conversation = conversations.create_conversation(user, provider="openai")
    return conversations.post_message(
        conversation, content, queue=QUEUE
    ).assistant_message


def token(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key


def wait_done(message: Message, timeout: float = 30) -> Message:
    def ended():
        message.refresh_from_db()
        return message.status in ("done", "failed")

    wait_for(ended, timeout, message=f"message {message.pk} to end")
    return message


def test_deltas_arrive_as_the_model_writes_them(alice, llm, asgi_server):
    llm.script.append(
        sse(*PIECES, pause=PAUSE, usage={"prompt_tokens": 7, "completion_tokens": 12})
    )
    reply = ask(alice)
    response = open_stream(
        asgi_server.url, f"/api/v1/messages/{reply.pk}/stream/", token(alice)
    )
    try:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        events = []
        for event in SSEClient(response):
            if event.event == "delta" and not any(e.event == "delta" for e in events):
                # the first delta: the reply is still being written, and the row
                # holds none of its text yet (saved every 30 s)
                row = Message.objects.get(pk=reply.pk)
                assert row.status == "generating"
                assert row.content == ""
            events.append(event)
    finally:
        close_stream(response)
    deltas = [e for e in events if e.event == "delta"]
    assert len(deltas) >= len(PIECES) // 2  # chunk by chunk, not one block
    assert events[-1].event == "done"
    done = events[-1].data
    assert done["status"] == "done"
    assert done["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 12,
        "total_tokens": 19,
        "estimated": False,
    }
    assert done["latency_ms"] > 0
    reply.refresh_from_db()
    assert "".join(d.data["text"] for d in deltas) == reply.content == ANSWER
    # ids are positions: each delta's id counts the characters sent so far
    assert [d.id for d in deltas][-1] == f"{len(ANSWER)}:0"
    assert events[-1].id == f"{len(ANSWER)}:0:end"
