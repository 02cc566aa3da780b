"""The claw admin: conversations with messages and their tasks, usage totals,
notifications with resend."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from claw import conversations
from claw.models import Message, Notification
from tasks_app.models import TaskRecord

pytestmark = pytest.mark.django_db


def reply(conversation, *, prompt, completion, latency, model="m-1", days_ago=0):
    message = Message.objects.create(
        conversation=conversation,
        role="assistant",
        status="done",
        content="answer",
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_ms=latency,
    )
    created = timezone.now() - timedelta(days=days_ago)
    Message.objects.filter(pk=message.pk).update(created_at=created)
    return message


@pytest.fixture
def usage(alice, bob):
    a1 = conversations.create_conversation(alice, title="a-one")
    a2 = conversations.create_conversation(alice, title="a-two")
    b1 = conversations.create_conversation(bob, title="b-one")
    reply(a1, prompt=10, completion=5, latency=100)
    reply(a1, prompt=20, completion=5, latency=300, days_ago=1)
    reply(a2, prompt=1, completion=1, latency=50, model="m-2")
    reply(b1, prompt=100, completion=50, latency=1000, days_ago=1)
    Message.objects.create(conversation=b1, role="user", content="not counted")
    return {"a1": a1, "a2": a2, "b1": b1}


def test_the_message_list_shows_usage_totals_overall_per_day_user_and_conversation(
    admin_client, usage
):
    response = admin_client.get(reverse("admin:claw_message_changelist"))

    assert response.status_code == 200
    totals = response.context_data["usage"]
    assert totals["overall"] == {
        "replies": 4,
        "prompt": 131,
        "completion": 61,
        "total": 192,
        "latency": 362.5,
    }
    today = timezone.localdate()
    days = {row["day"]: (row["replies"], row["total"]) for row in totals["per_day"]}
    assert days == {today: (2, 17), today - timedelta(days=1): (2, 175)}
    users = [(r["user"], r["replies"], r["total"]) for r in totals["per_user"]]
    assert users == [("bob", 1, 150), ("alice", 3, 42)]
    chats = [(r["title"], r["replies"], r["total"]) for r in totals["per_conversation"]]
    assert chats == [("b-one", 1, 150), ("a-one", 2, 40), ("a-two", 1, 2)]
    html = response.content.decode()
    assert 'id="usage-per-user"' in html
    assert "<td>bob</td><td>1</td><td>150</td><td>1000</td>" in html
    assert "<td>192</td>" in html  # the overall total


def test_usage_totals_follow_the_lists_filters(admin_client, usage):
    url = reverse("admin:claw_message_changelist") + "?model=m-2"

    totals = admin_client.get(url).context_data["usage"]

    assert totals["overall"]["replies"] == 1 and totals["overall"]["total"] == 2
    assert [r["user"] for r in totals["per_user"]] == ["alice"]


def test_a_conversation_page_shows_its_messages_with_their_tasks(
    admin_client, alice, no_publish
):
    conversation = conversations.create_conversation(alice, title="Support")
    submission = conversations.post_message(conversation, "Where is it?")

    response = admin_client.get(
        reverse("admin:claw_conversation_change", args=[conversation.pk])
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert "Where is it?" in html
    record_url = reverse("admin:tasks_app_taskrecord_change", args=[submission.task.pk])
    assert record_url in html and "claw-badge" in html  # link to the timeline
    message_url = reverse(
        "admin:claw_message_change", args=[submission.assistant_message.pk]
    )
    assert message_url in html
    assert 'name="_save"' not in html  # written by claw.conversations only


def test_a_message_page_lists_the_tasks_that_worked_on_it(
    admin_client, alice, no_publish
):
    conversation = conversations.create_conversation(alice)
    submission = conversations.post_message(conversation, "q")

    response = admin_client.get(
        reverse("admin:claw_message_change", args=[submission.assistant_message.pk])
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert "claw.generate_ai_response" in html
    assert (
        reverse("admin:tasks_app_taskrecord_change", args=[submission.task.pk]) in html
    )


def test_the_conversation_list_renders_counts_and_tokens(admin_client, usage):
    response = admin_client.get(reverse("admin:claw_conversation_changelist"))

    assert response.status_code == 200
    rows = {
        c.title: (c._messages, c._tokens)
        for c in response.context_data["cl"].result_list
    }
    assert rows == {"a-one": (2, 40), "a-two": (1, 2), "b-one": (2, 150)}


def test_deleting_a_conversation_in_the_admin_goes_through_the_service(
    admin_client, alice, no_publish, monkeypatch
):
    monkeypatch.setattr("tasks_app.workers.revoke", lambda celery_id, terminate: None)
    conversation = conversations.create_conversation(alice)
    record = conversations.post_message(conversation, "q").task
    url = reverse("admin:claw_conversation_delete", args=[conversation.pk])

    admin_client.post(url, {"post": "yes"})

    assert not Message.objects.exists()
    assert TaskRecord.objects.get(pk=record.pk).state == "REVOKED"


def test_resend_action_resends_finished_notifications_and_skips_pending_ones(
    admin_client, alice, no_publish
):
    failed = Notification.objects.create(
        recipient=alice, channel="push", subject="a", status="failed", error="x"
    )
    sent = Notification.objects.create(
        recipient=alice, channel="system", subject="b", status="sent"
    )
    pending = Notification.objects.create(recipient=alice, channel="email", subject="c")

    response = admin_client.post(
        reverse("admin:claw_notification_changelist"),
        {
            "action": "resend_selected",
            "_selected_action": [failed.pk, sent.pk, pending.pk],
        },
        follow=True,
    )

    notices = [str(m) for m in get_messages(response.wsgi_request)]
    assert notices == ["Resent 2 notification(s); skipped 1 still pending."]
    assert set(
        TaskRecord.objects.filter(name="claw.send_notification").values_list(
            "object_id", flat=True
        )
    ) == {failed.pk, sent.pk}
    failed.refresh_from_db()
    assert (failed.status, failed.error) == ("pending", "")
