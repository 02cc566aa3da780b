"""Conversations, messages, AI-reply submissions and notifications over the API."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from rest_framework import serializers

from claw import conversations
from claw.api.serializers import MessageSerializer
from claw.models import Message, Notification
from knowledge.models import KnowledgeBase
from tasks_app.api.serializers import TaskRecordSerializer
from tasks_app.models import TaskRecord
from tasks_app.tests.test_api import client_for

pytestmark = pytest.mark.django_db


def knowledge_base(owner, name="Docs") -> KnowledgeBase:
    return KnowledgeBase.objects.create(owner=owner, name=name)


@pytest.fixture
def chat(alice):
    return conversations.create_conversation(alice, title="Alice's chat")


@pytest.fixture
def objects(chat, alice, no_publish):
    reply = conversations.post_message(chat, "q").assistant_message
    notification = Notification.objects.create(
        recipient=alice, channel="system", subject="Hi"
    )
    return {
        "conversation": chat.pk,
        "message": reply.pk,
        "notification": notification.pk,
    }


OBJECT_ENDPOINTS = [
    ("get", "/api/v1/conversations/{conversation}/"),
    ("patch", "/api/v1/conversations/{conversation}/"),
    ("delete", "/api/v1/conversations/{conversation}/"),
    ("get", "/api/v1/conversations/{conversation}/messages/"),
    ("post", "/api/v1/conversations/{conversation}/messages/"),
    ("get", "/api/v1/messages/{message}/"),
    ("get", "/api/v1/notifications/{notification}/"),
    ("post", "/api/v1/notifications/{notification}/read/"),
]
LIST_ENDPOINTS = [
    ("get", "/api/v1/conversations/"),
    ("post", "/api/v1/conversations/"),
    ("get", "/api/v1/notifications/"),
    ("post", "/api/v1/tasks/ai/generate/"),
]


@pytest.mark.parametrize("method,url", OBJECT_ENDPOINTS + LIST_ENDPOINTS)
def test_anonymous_requests_are_refused(method, url, objects):
    response = getattr(client_for(None), method)(url.format(**objects))
    assert response.status_code == 401


@pytest.mark.parametrize("method,url", OBJECT_ENDPOINTS)
def test_another_users_objects_are_not_found(method, url, objects, bob):
    response = getattr(client_for(bob), method)(
        url.format(**objects), {"content": "hi"}, format="json"
    )
    assert response.status_code == 404


@pytest.mark.parametrize("method,url", OBJECT_ENDPOINTS[:6])
def test_staff_reach_everyones_conversations(method, url, objects, staff):
    response = getattr(client_for(staff), method)(
        url.format(**objects), {"content": "hi"}, format="json"
    )
    assert response.status_code in (200, 202, 204)


def test_a_reply_staff_post_belongs_to_the_conversations_owner(
    alice, chat, staff, no_publish
):
    url = f"/api/v1/conversations/{chat.pk}/messages/"
    staff_api = client_for(staff)

    first = staff_api.post(
        url, {"content": "hi"}, format="json", HTTP_IDEMPOTENCY_KEY="s"
    )
    again = staff_api.post(
        url, {"content": "hi"}, format="json", HTTP_IDEMPOTENCY_KEY="s"
    )

    task = first.json()["task"]
    assert TaskRecord.objects.get(pk=task["id"]).owner == alice
    assert client_for(alice).get(f"/api/v1/tasks/{task['id']}/").status_code == 200
    assert again.json()["task"]["id"] == task["id"]
    assert TaskRecord.objects.count() == 1


def test_notifications_are_an_inbox_even_for_staff(objects, staff):
    url = "/api/v1/notifications/{notification}/".format(**objects)
    assert client_for(staff).get(url).status_code == 404
    assert client_for(staff).get("/api/v1/notifications/").json()["results"] == []


def test_conversations_take_only_the_users_own_knowledge_bases(alice, bob):
    mine, theirs = knowledge_base(alice), knowledge_base(bob)
    api = client_for(alice)

    created = api.post(
        "/api/v1/conversations/",
        {"title": "Docs chat", "knowledge_bases": [mine.pk], "temperature": 0.2},
        format="json",
    )
    # someone else's id answers as that knowledge base's own URL would: 404
    refused = api.post(
        "/api/v1/conversations/", {"knowledge_bases": [theirs.pk]}, format="json"
    )
    missing = api.post(
        "/api/v1/conversations/", {"knowledge_bases": [theirs.pk + 100]}, format="json"
    )

    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["knowledge_bases"] == [mine.pk] and body["temperature"] == 0.2
    assert body["links"]["messages"] == f"/api/v1/conversations/{body['id']}/messages/"
    assert refused.status_code == 404 and "knowledge_bases" in refused.json()
    assert missing.json() == {
        "knowledge_bases": [f"No such knowledge base: {theirs.pk + 100}."]
    }
    assert [c["id"] for c in api.get("/api/v1/conversations/").json()["results"]] == [
        body["id"]
    ]


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", 2.5),
        ("max_history", 0),
        ("provider", "skynet"),
        ("knowledge_bases", ["x"]),
        ("knowledge_bases", [1.5]),
        ("title", "x" * 201),
        ("title", 5),
        ("temperature", "0.5"),
        ("max_history", "3"),
        ("knowledge_bases", ["1"]),
    ],
)
def test_bad_conversation_settings_are_a_400_naming_the_field(alice, field, value):
    response = client_for(alice).post(
        "/api/v1/conversations/", {field: value}, format="json"
    )
    assert response.status_code == 400 and field in response.json()


def test_a_conversation_is_updated_and_deleted_through_the_api(alice, chat):
    kb = knowledge_base(alice)
    api = client_for(alice)

    patched = api.patch(
        f"/api/v1/conversations/{chat.pk}/",
        {"title": "Renamed", "knowledge_bases": [kb.pk], "max_history": 4},
        format="json",
    )
    deleted = api.delete(f"/api/v1/conversations/{chat.pk}/")

    assert patched.status_code == 200
    assert (patched.json()["title"], patched.json()["knowledge_bases"]) == (
        "Renamed",
        [kb.pk],
    )
    assert deleted.status_code == 204
    assert api.get(f"/api/v1/conversations/{chat.pk}/").status_code == 404


def test_posting_a_message_answers_202_with_both_messages_and_the_task(
    alice, chat, no_publish
):
    response = client_for(alice).post(
        f"/api/v1/conversations/{chat.pk}/messages/",
        {"content": "What is CLAW?"},
        format="json",
    )

    assert response.status_code == 202, response.json()
    body = response.json()
    question, reply, task = (
        body["user_message"],
        body["assistant_message"],
        body["task"],
    )
    assert (question["role"], question["content"]) == ("user", "What is CLAW?")
    assert (reply["role"], reply["status"], reply["reply_to"]) == (
        "assistant",
        "pending",
        question["id"],
    )
    assert (task["name"], task["state"], task["queue"]) == (
        "claw.generate_ai_response",
        "PENDING",
        "ai_high_priority",
    )
    assert reply["task"] == task["id"] and reply["task_state"] == "PENDING"


@pytest.mark.parametrize(
    "body", [{}, {"content": ""}, {"content": "  "}, {"content": 5}]
)
def test_a_message_needs_content(alice, chat, body):
    response = client_for(alice).post(
        f"/api/v1/conversations/{chat.pk}/messages/", body, format="json"
    )
    assert response.status_code == 400 and "content" in response.json()
    assert not Message.objects.exists()


def test_nul_characters_postgresql_cannot_store_are_dropped(alice, chat, no_publish):
    response = client_for(alice).post(
        f"/api/v1/conversations/{chat.pk}/messages/",
        {"content": "hel\x00lo"},
        format="json",
    )
    assert response.status_code == 202
    assert response.json()["user_message"]["content"] == "hello"


def test_the_same_idempotency_key_returns_the_same_messages_and_task(
    alice, chat, no_publish
):
    api = client_for(alice)
    url = f"/api/v1/conversations/{chat.pk}/messages/"

    first = api.post(url, {"content": "hi"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = api.post(url, {"content": "hi"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    other = api.post(url, {"content": "yo"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    bad = api.post(url, {"content": "hi"}, format="json", HTTP_IDEMPOTENCY_KEY="a b")

    assert first.status_code == again.status_code == 202
    for part in ("user_message", "assistant_message", "task"):
        assert first.json()[part]["id"] == again.json()[part]["id"]
    assert Message.objects.count() == 2 and TaskRecord.objects.count() == 1
    assert other.status_code == 409
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()


def test_the_old_generate_endpoint_submits_a_reply_under_tasks(
    alice, bob, chat, no_publish
):
    api = client_for(alice)
    body = {"conversation_id": chat.pk, "user_message": "Hello?"}

    response = api.post(
        "/api/v1/tasks/ai/generate/", body, format="json", HTTP_IDEMPOTENCY_KEY="g"
    )
    again = api.post(
        "/api/v1/tasks/ai/generate/", body, format="json", HTTP_IDEMPOTENCY_KEY="g"
    )
    not_theirs = client_for(bob).post("/api/v1/tasks/ai/generate/", body, format="json")

    assert response.status_code == 202, response.json()
    task = response.json()["task"]
    assert task["name"] == "claw.generate_ai_response"
    assert again.json()["task"]["id"] == task["id"]
    assert TaskRecord.objects.count() == 1
    assert response.json()["assistant_message"]["conversation"] == chat.pk
    # the task is also in the task API, where old clients poll it
    assert api.get(f"/api/v1/tasks/{task['id']}/").json()["state"] == "PENDING"
    assert not_theirs.status_code == 404 and "conversation_id" in not_theirs.json()


def test_messages_are_listed_oldest_first_and_can_be_polled_after_an_id(
    alice, chat, no_publish
):
    first = conversations.post_message(chat, "one")
    conversations.post_message(chat, "two")
    api = client_for(alice)
    url = f"/api/v1/conversations/{chat.pk}/messages/"

    listed = api.get(url).json()["results"]
    after = api.get(url + f"?after={first.assistant_message.pk}").json()["results"]

    assert [m["content"] for m in listed if m["role"] == "user"] == ["one", "two"]
    assert [m["id"] for m in listed] == sorted(m["id"] for m in listed)
    assert len(after) == 2 and after[0]["content"] == "two"
    assert api.get(url + "?after=x").status_code == 400


def test_notifications_list_own_newest_first_filter_unread_and_mark_read(alice, bob):
    older = Notification.objects.create(recipient=alice, channel="system", subject="1")
    newer = Notification.objects.create(recipient=alice, channel="email", subject="2")
    Notification.objects.create(recipient=bob, channel="system", subject="bob's")
    api = client_for(alice)

    listed = api.get("/api/v1/notifications/").json()["results"]
    read = api.post(f"/api/v1/notifications/{older.pk}/read/")
    unread = api.get("/api/v1/notifications/?unread=true").json()["results"]
    was_read = api.get("/api/v1/notifications/?unread=false").json()["results"]
    system = api.get("/api/v1/notifications/?channel=system").json()["results"]

    assert [n["id"] for n in listed] == [newer.pk, older.pk]
    assert read.status_code == 200 and read.json()["unread"] is False
    assert read.json()["read_at"] is not None
    assert [n["id"] for n in unread] == [newer.pk]
    assert [n["id"] for n in was_read] == [older.pk]
    assert [n["id"] for n in system] == [older.pk]
    for bad in ("?unread=yes", "?channel=pigeon"):
        response = api.get("/api/v1/notifications/" + bad)
        assert response.status_code == 400 and bad[1:].split("=")[0] in response.json()


def test_submissions_past_the_submit_rate_get_429(alice, chat, no_publish):
    from django.core.cache import cache
    from rest_framework.throttling import ScopedRateThrottle

    cache.clear()
    api = client_for(alice)
    url = f"/api/v1/conversations/{chat.pk}/messages/"
    with patch.dict(ScopedRateThrottle.THROTTLE_RATES, {"submit": "2/min"}):
        codes = [
            api.post(url, {"content": "q"}, format="json").status_code for _ in range(3)
        ]
        reads = api.get(url).status_code  # reading is not a submission
    cache.clear()
    assert codes == [202, 202, 429] and reads == 200


def test_the_schema_describes_the_submission_endpoints(staff):
    schema = client_for(staff).get("/api/schema/").content.decode()
    assert "/api/v1/tasks/ai/generate/" in schema
    assert "/api/v1/conversations/{id}/messages/" in schema
    assert "Idempotency-Key" in schema


def test_serializers_that_build_their_fields_once_answer_as_a_fresh_build(
    alice, chat, no_publish
):
    # given a reply, serialized by the cached fields and by a fresh introspection
    message = conversations.post_message(chat, "Hello?").assistant_message
    cached, other = MessageSerializer(message), MessageSerializer(message)
    fresh = serializers.ModelSerializer.get_fields(MessageSerializer())

    # then the fields are the same kinds, and each instance has its own copies
    assert {n: type(f) for n, f in cached.fields.items()} == {
        n: type(f) for n, f in fresh.items()
    }
    assert cached.fields["content"] is not other.fields["content"]
    assert cached.fields["content"].parent is cached
    assert cached.data == other.data and cached.data["id"] == message.pk
    task = TaskRecordSerializer(message.task).data
    assert (task["state"], task["links"]["self"]) == (
        "PENDING",
        f"/api/v1/tasks/{message.task_id}/",
    )


def test_knowledge_bases_must_be_a_list_not_an_object(alice):
    # DRF's many-related field takes any iterable: {} passed as "no knowledge
    # bases" (found by the schema fuzzing).
    response = client_for(alice).post(
        "/api/v1/conversations/", {"knowledge_bases": {}}, format="json"
    )

    assert response.status_code == 400
    assert "knowledge_bases" in response.json()
