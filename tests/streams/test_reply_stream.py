"""Replies streamed to SSE clients, end to end: the scripted OpenAI-compatible
server streams an answer to a real Celery worker, which publishes each chunk
through Redis to a real uvicorn process serving claw.asgi, read here over HTTP.

The worker saves the text only every 30 s (AI_STREAM_SAVE_INTERVAL), far longer
than a reply takes: every delta seen before the end came from the live path,
not from the database.
"""

from __future__ import annotations

import time

import pytest

from claw import conversations
from claw.models import Message
from claw.tests.conftest import sse
from tasks_app import tokens
from tasks_app.models import TaskRecord
from tests.harness import wait_for
from tests.streams.conftest import QUEUE, SSEClient, close_stream, open_stream

pytestmark = pytest.mark.worker

PIECES = [f"word{n} " for n in range(12)]
ANSWER = "".join(PIECES)
PAUSE = 0.15  # between chunks: the whole answer takes about 2 s


def ask(user, content="What is CLAW?") -> Message:
    conversation = conversations.create_conversation(user, provider="openai")
    return conversations.post_message(
        conversation, content, queue=QUEUE
    ).assistant_message


def token(user) -> str:
    return tokens.issue(user)[1]


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


def read_until(client: SSEClient, stop) -> list:
    events = []
    for event in client:
        events.append(event)
        if stop(events):
            break
    return events


def test_a_client_cut_mid_stream_resumes_with_exactly_the_rest(alice, llm, asgi_server):
    llm.script.append(sse(*PIECES, pause=PAUSE))
    reply = ask(alice)
    path = f"/api/v1/messages/{reply.pk}/stream/"
    first = open_stream(asgi_server.url, path, token(alice))
    try:
        # cut after the third delta, while the model is still writing
        before = read_until(
            SSEClient(first), lambda evs: sum(e.event == "delta" for e in evs) == 3
        )
    finally:
        close_stream(first)
    assert Message.objects.get(pk=reply.pk).status == "generating"
    last_id = before[-1].id
    time.sleep(3 * PAUSE)  # chunks written while nobody listened
    again = open_stream(
        asgi_server.url, path, token(alice), **{"Last-Event-ID": last_id}
    )
    try:
        rest = list(SSEClient(again))
    finally:
        close_stream(again)
    text = "".join(e.data["text"] for e in before + rest if e.event == "delta")
    reply.refresh_from_db()
    assert text == reply.content == ANSWER  # no gap, no repeat
    assert rest[-1].event == "done"
    # ?after= is the same for clients that cannot set the header
    third = open_stream(asgi_server.url, f"{path}?after={last_id}", token(alice))
    try:
        rest_again = list(SSEClient(third))
    finally:
        close_stream(third)
    assert (
        "".join(e.data["text"] for e in rest_again if e.event == "delta")
        == (ANSWER[int(last_id.split(":")[0]) :])
    )


def test_a_finished_reply_replays_at_once_and_the_end_is_final(alice, llm, asgi_server):
    llm.script.append(sse(*PIECES))
    reply = wait_done(ask(alice))
    path = f"/api/v1/messages/{reply.pk}/stream/"
    started = time.monotonic()
    response = open_stream(asgi_server.url, path, token(alice))
    try:
        events = list(SSEClient(response))
    finally:
        close_stream(response)
    assert time.monotonic() - started < 2
    assert [e.event for e in events] == ["delta", "done"]
    assert events[0].data["text"] == ANSWER
    # EventSource reconnects after the server closes: 204 tells it to stop
    again = open_stream(
        asgi_server.url, path, token(alice), **{"Last-Event-ID": events[-1].id}
    )
    try:
        assert again.status_code == 204
    finally:
        close_stream(again)
    bad = open_stream(asgi_server.url, f"{path}?after=x", token(alice))
    try:
        assert bad.status_code == 400 and "after" in bad.read().decode()
    finally:
        close_stream(bad)


def test_someone_elses_reply_or_task_is_a_404_before_any_event(
    alice, bob, llm, asgi_server
):
    llm.script.append(sse("secret"))
    reply = wait_done(ask(alice))
    for path in (
        f"/api/v1/messages/{reply.pk}/stream/",
        f"/api/v1/tasks/{reply.task_id}/stream/",
        f"/api/v1/events/stream/?conversation={reply.conversation_id}",
    ):
        response = open_stream(asgi_server.url, path, token(bob))
        try:
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/json"
            assert "secret" not in response.read().decode()
        finally:
            close_stream(response)
        anonymous = open_stream(asgi_server.url, path, None)
        try:
            assert anonymous.status_code == 401, path
        finally:
            close_stream(anonymous)


def test_a_task_stream_names_events_as_the_old_system_and_ends(alice, llm, asgi_server):
    llm.script.append(sse(*PIECES, pause=PAUSE))
    reply = ask(alice)
    path = f"/api/v1/tasks/{reply.task_id}/stream/"
    response = open_stream(asgi_server.url, path, token(alice))
    try:
        events = list(SSEClient(response))  # ends by itself at the final state
    finally:
        close_stream(response)
    names = [e.event for e in events]
    assert names[0] == "task_queued" and names[-1] == "task_completed", names
    assert "task_started" in names
    record = TaskRecord.objects.get(pk=reply.task_id)
    assert [int(e.id) for e in events] == list(
        record.events.order_by("id").values_list("id", flat=True)
    )
    done = events[-1].data
    assert done["task_id"] == record.pk and done["state"] == "SUCCESS"
    assert done["result"]["message_id"] == reply.pk
    assert done["duration"] > 0
    # resumable: after the first event, exactly the others
    again = open_stream(asgi_server.url, f"{path}?after={events[0].id}", token(alice))
    try:
        assert [e.id for e in SSEClient(again)] == [e.id for e in events[1:]]
    finally:
        close_stream(again)
    # after the last event of an ended task: 204, so an EventSource stops
    last = open_stream(asgi_server.url, f"{path}?after={events[-1].id}", token(alice))
    try:
        assert last.status_code == 204
    finally:
        close_stream(last)


def test_the_events_stream_carries_the_callers_replies_and_tasks_only(
    alice, bob, llm, asgi_server
):
    llm.script.append(sse(*PIECES, pause=PAUSE))
    mine = open_stream(asgi_server.url, "/api/v1/events/stream/", token(alice))
    theirs = open_stream(asgi_server.url, "/api/v1/events/stream/", token(bob))
    try:
        assert mine.status_code == theirs.status_code == 200
        reply = ask(alice)
        events = read_until(
            SSEClient(mine),
            lambda evs: (
                evs[-1].event == "task_completed"
                and evs[-1].data["task_id"] == reply.task_id
            ),
        )
        llm.script.append(sse("for bob"))
        bobs = ask(bob)
        bob_events = read_until(
            SSEClient(theirs), lambda evs: evs[-1].event == "task_completed"
        )
    finally:
        close_stream(mine)
        close_stream(theirs)
    text = "".join(
        e.data["text"]
        for e in events
        if e.event == "delta" and e.data["message"] == reply.pk
    )
    assert text == ANSWER
    assert {e.data["task_id"] for e in events if e.event.startswith("task_")} == {
        reply.task_id
    }
    assert {e.data["task_id"] for e in bob_events if e.event.startswith("task_")} == {
        bobs.task_id
    }
    assert all(e.data["message"] == bobs.pk for e in bob_events if e.event == "delta")
