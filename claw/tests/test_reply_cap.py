"""One user cannot fill the reply queue: a cap on replies in flight, per user."""

from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections

from claw import conversations
from claw.models import Message
from tasks_app.models import TaskRecord
from tasks_app.tests.test_api import client_for


def post(user, conversation, content="q"):
    return client_for(user).post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": content},
        format="json",
    )


@pytest.mark.django_db
def test_past_the_cap_a_message_is_a_429_with_retry_after_and_nothing_written(
    settings, alice, bob, no_publish
):
    settings.AI_MAX_REPLIES_IN_FLIGHT = 2
    chat = conversations.create_conversation(alice)
    assert [post(alice, chat).status_code for _ in range(2)] == [202, 202]
    rows = (Message.objects.count(), TaskRecord.objects.count())

    refused = post(alice, chat, "one more")

    assert refused.status_code == 429
    assert refused["Retry-After"] == str(settings.AI_IN_FLIGHT_RETRY_AFTER)
    assert "2 replies are already being generated" in refused.json()["detail"]
    assert (Message.objects.count(), TaskRecord.objects.count()) == rows
    assert not Message.objects.filter(content="one more").exists()
    # the cap is per user: bob is not held up by alice's replies
    assert post(bob, conversations.create_conversation(bob)).status_code == 202
    # a reply that ends frees its slot
    reply = Message.objects.filter(role="assistant", conversation=chat).first()
    conversations.fail_reply(reply.pk, error="stopped")
    assert post(alice, chat).status_code == 202


@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_of_one_user_never_pass_the_cap(settings, alice, no_publish):
    settings.AI_MAX_REPLIES_IN_FLIGHT = 3
    chat = conversations.create_conversation(alice)
    codes: list[int] = []
    barrier = threading.Barrier(8)

    def one():
        try:
            barrier.wait(timeout=10)
            codes.append(post(alice, chat).status_code)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(codes) == [202] * 3 + [429] * 5
    active = Message.objects.filter(role="assistant", status="pending")
    assert active.count() == 3 and Message.objects.count() == 6
