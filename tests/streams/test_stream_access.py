"""Every Server-Sent Events stream in the OpenAPI schema against the access rules
of the REST API (tests/test_auth_matrix.py, which leaves the streams to this
module), on a real ASGI server: anonymous gets 401; another user gets a JSON 404
for an object that is not theirs, before any event; the owner and staff get a
stream. A new stream in the schema is checked here without being named."""

from __future__ import annotations

import json
import re
from unittest.mock import patch

import pytest

from claw import conversations
from knowledge import services as knowledge
from tasks_app import services as ledger
from tests.streams.conftest import close_stream, open_stream
from tests.streams.test_reply_stream import token
from tests.test_auth_matrix import operations
from writing import jobs

pytestmark = pytest.mark.worker
STREAMS = operations(streams=True)
OBJECT_OF = {"tasks": "task", "messages": "message", "jobs": "job"}


@pytest.fixture
def objects(alice, transactional_db):
    with patch.object(ledger, "publish", return_value=True):  # nothing runs them
        chat = conversations.create_conversation(alice, title="Chat")
        reply = conversations.post_message(chat, "q").assistant_message
        kb = knowledge.create_knowledge_base(alice, name="KB")
        job = jobs.start_outline_job(
            alice, task_prompt="t", knowledge_bases=[kb], job_id="plan"
        ).job
    return {
        "task": reply.task_id,
        "message": reply.pk,
        "job": job.job_id,
        "conversation": chat.pk,
    }


def url_of(path: str, objects: dict) -> str:
    if "{" not in path:
        return f"{path}?conversation={objects['conversation']}"
    name = OBJECT_OF[path.split("/")[3]]
    return re.sub(r"\{[^}]+\}", str(objects[name]), path)


def status_of(base: str, url: str, user) -> tuple[int, str]:
    response = open_stream(base, url, token(user) if user else None)
    try:
        kind = response.headers.get("content-type", "")
        return response.status_code, kind
    finally:
        close_stream(response)


def test_the_schema_has_the_four_streams():
    assert {path for _, path in STREAMS} == {
        "/api/v1/messages/{id}/stream/",
        "/api/v1/tasks/{id}/stream/",
        "/api/v1/jobs/{job_id}/stream/",
        "/api/v1/events/stream/",
    }


@pytest.mark.parametrize("method,path", STREAMS)
def test_streams_follow_the_rest_apis_access_rules(
    method, path, objects, alice, bob, staff, asgi_server
):
    url = url_of(path, objects)
    assert status_of(asgi_server.url, url, None)[0] == 401
    assert status_of(asgi_server.url, url, bob) == (404, "application/json")
    for user in (alice, staff):
        status, kind = status_of(asgi_server.url, url, user)
        assert status == 200 and kind.startswith("text/event-stream"), (user, status)


def test_the_events_stream_narrows_to_ones_own_job_or_conversation(
    objects, alice, bob, asgi_server
):
    base, path = asgi_server.url, "/api/v1/events/stream/"
    assert status_of(base, f"{path}?job={objects['job']}", alice)[0] == 200
    assert status_of(base, f"{path}?job={objects['job']}", bob)[0] == 404
    for query, field in (
        ("?job=no%20spaces", "job"),
        ("?conversation=x", "conversation"),
        (f"?conversation={objects['conversation']}&job=plan", "job"),
        ("?after=abc", "after"),
    ):
        response = open_stream(base, path + query, token(alice))
        try:
            assert response.status_code == 400, query
            body = json.loads(response.read())
            assert field in body, (query, body)
        finally:
            close_stream(response)
