"""Every API error is JSON in DRF's one shape, and the size limits agree."""

from __future__ import annotations

import json
from unittest.mock import patch

import pytest
from django.conf import settings

from knowledge import services as knowledge
from tasks_app.tests.test_api import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def kb(alice):
    return knowledge.create_knowledge_base(alice, name="kb")


def post_json(api, url, body: dict):
    return api.post(url, json.dumps(body), content_type="application/json")


def test_a_large_chinese_document_within_the_limit_is_accepted(alice, kb):
    # 450,000 characters: 1.35 MB of UTF-8, but 2.7 MB of JSON (\\u4e2d each),
    # past Django's default DATA_UPLOAD_MAX_MEMORY_SIZE of 2.5 MB.
    content = "中" * 450_000
    body = {"knowledge_base": kb.pk, "title": "t", "content": content}
    response = post_json(
        client_for(alice), "/api/v1/documents/", body | {"vectorize": False}
    )
    assert response.status_code == 201, response.content[:300]
    assert response["Content-Type"] == "application/json"


def test_content_over_the_limit_is_a_json_413_naming_the_field(alice, kb):
    too_long = "a" * (settings.KNOWLEDGE_MAX_UPLOAD_BYTES + 1)
    body = {"knowledge_base": kb.pk, "title": "t", "content": too_long}
    response = post_json(client_for(alice), "/api/v1/documents/", body)
    assert response.status_code == 413
    assert list(response.json()) == ["content"]
    assert isinstance(response.json()["content"], list)


def test_escaped_content_within_the_limit_is_never_refused_by_django(
    alice, kb, settings
):
    # Worst case: every byte escaped to six ("\\u0001").
    settings.KNOWLEDGE_MAX_UPLOAD_BYTES = 10_000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 6 * 10_000 + 64 * 1024
    body = {"knowledge_base": kb.pk, "title": "t", "content": "x\x01" * 5_000}
    response = post_json(
        client_for(alice), "/api/v1/documents/", body | {"vectorize": False}
    )
    assert response.status_code == 201, response.content[:300]


def test_a_body_over_djangos_limit_anywhere_in_the_api_is_a_json_413(alice, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    response = post_json(
        client_for(alice), "/api/v1/conversations/", {"title": "x" * 2_000}
    )
    assert response.status_code == 413
    assert "DATA_UPLOAD_MAX_MEMORY_SIZE" in response.json()["detail"]


def test_field_errors_are_lists_of_readable_messages(alice):
    api = client_for(alice)
    state = api.get("/api/v1/tasks/?state=DONE").json()
    queue = api.get("/api/v1/tasks/?queue=nope").json()
    created = api.get("/api/v1/tasks/?created_after=yesterday").json()
    channel = api.get("/api/v1/notifications/?channel=fax").json()
    kind = api.get("/api/v1/jobs/?kind=essay").json()
    assert state == {
        "state": [
            "Must be one of: PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED, LOST."
        ]
    }
    assert queue["queue"][0].startswith("Must be one of: ai_high_priority, ")
    assert "(" not in queue["queue"][0] and "[" not in state["state"][0]
    assert isinstance(created["created_after"], list)
    assert isinstance(channel["channel"], list)
    assert kind == {"kind": ["Must be one of: outline, document."]}


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/tasks/999999/",
        "/api/v1/knowledge-bases/999999/",
        "/api/v1/documents/999999/",
        "/api/v1/conversations/999999/",
        "/api/v1/messages/999999/",
        "/api/v1/no-such-thing/",
    ],
)
def test_not_found_names_no_internal_model(alice, url):
    response = client_for(alice).get(url)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_a_crash_in_the_api_is_a_json_500(staff):
    api = client_for(staff)
    api.raise_request_exception = False
    with patch("tasks_app.dashboard.summary", side_effect=RuntimeError("boom")):
        response = api.get("/api/v1/tasks/stats/")
    assert response.status_code == 500
    assert response.json() == {"detail": "Server error."}
    assert "boom" not in response.content.decode()


def test_a_countdown_the_broker_would_redeliver_is_a_400_naming_the_field():
    from tasks_app import services
    from tasks_app.api.errors import exception_handler

    response = exception_handler(services.DelayTooLong("countdown", 6600), {})

    assert response.status_code == 400
    assert list(response.data) == ["countdown"]
    assert "at most 6600 seconds" in response.data["countdown"][0]
