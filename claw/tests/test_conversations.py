"""claw.conversations (the one writer of conversations and messages) and the prompt."""

from __future__ import annotations

import pytest
from django.utils import timezone

from claw import conversations, replies
from claw.models import Conversation, Message
from tasks_app import maintenance
from tasks_app.models import TaskRecord

pytestmark = pytest.mark.django_db
Status = Message.Status


def finish(message_id: int, text: str) -> bool:
    return conversations.finish_reply(
        message_id,
        text=text,
        truncated=False,
        provider="extractive",
        model="m",
        prompt_tokens=3,
        completion_tokens=2,
        tokens_estimated=True,
        latency_ms=5,
    )


def test_post_message_stores_both_messages_and_submits_the_reply_task(
    alice, no_publish, django_capture_on_commit_callbacks
):
    conversation = conversations.create_conversation(alice, title="Help")
    with django_capture_on_commit_callbacks(execute=True):
        submission = conversations.post_message(conversation, "What is CLAW?")

    question, reply, record = (
        submission.user_message,
        submission.assistant_message,
        submission.task,
    )
    assert (question.role, question.status, question.content) == (
        "user",
        "done",
        "What is CLAW?",
    )
    assert (reply.role, reply.status, reply.reply_to_id) == (
        "assistant",
        "pending",
        question.pk,
    )
    assert Message.objects.get(pk=reply.pk).task_id == record.pk
    assert (record.name, record.args, record.owner) == (
        "claw.generate_ai_response",
        [reply.pk],
        alice,
    )
    assert (record.queue, record.target) == ("ai_high_priority", reply)
    assert no_publish == [record]  # published once, after commit


def test_a_failed_submission_leaves_no_message_behind(alice, monkeypatch):
    conversation = conversations.create_conversation(alice)

    def broken(*args, **kwargs):
        raise RuntimeError("ledger down")

    monkeypatch.setattr(conversations.ledger, "submit", broken)
    with pytest.raises(RuntimeError):
        conversations.post_message(conversation, "hello")
    assert not Message.objects.exists()


def test_replay_returns_the_first_submission_and_refuses_another_request(
    alice, no_publish
):
    conversation = conversations.create_conversation(alice)
    other = conversations.create_conversation(alice)
    first = conversations.post_message(conversation, "hello", idempotency_key="k1")

    again = conversations.replay(first.task, conversation, "hello")

    assert (again.user_message, again.assistant_message, again.task) == (
        first.user_message,
        first.assistant_message,
        first.task,
    )
    with pytest.raises(conversations.DifferentRequest):
        conversations.replay(first.task, other, "hello")
    with pytest.raises(conversations.DifferentRequest):
        conversations.replay(first.task, conversation, "something else")


def test_begin_reply_restarts_a_half_written_reply_on_the_same_row(alice, no_publish):
    conversation = conversations.create_conversation(alice)
    reply = conversations.post_message(conversation, "q")
    reply = reply.assistant_message
    now = timezone.now()
    conversations.begin_reply(reply.pk, started_at=now)
    conversations.save_partial(reply.pk, "half of an ans")

    # a redelivery after the worker died starts again from nothing
    again = conversations.begin_reply(reply.pk, started_at=now)

    assert again.pk == reply.pk
    assert (again.status, again.content) == (Status.GENERATING, "")
    assert Message.objects.filter(role="assistant").count() == 1


def test_a_done_reply_is_never_rewritten_and_a_late_failure_changes_nothing(
    alice, no_publish
):
    conversation = conversations.create_conversation(alice)
    reply = conversations.post_message(conversation, "q")
    pk = reply.assistant_message.pk
    conversations.begin_reply(pk, started_at=timezone.now())
    finish(pk, "answer")

    assert conversations.begin_reply(pk, started_at=timezone.now()) is None
    assert conversations.needs_reply(pk) is False
    assert conversations.fail_reply(pk, error="late") is False
    message = Message.objects.get(pk=pk)
    assert (message.status, message.content, message.error) == ("done", "answer", "")


def test_a_failed_reply_keeps_what_streamed_marked_truncated(alice, no_publish):
    conversation = conversations.create_conversation(alice)
    pk = conversations.post_message(conversation, "q")
    pk = pk.assistant_message.pk
    conversations.begin_reply(pk, started_at=timezone.now())

    assert conversations.fail_reply(pk, error="Cancelled.", text="partial")

    message = Message.objects.get(pk=pk)
    assert (message.status, message.content, message.truncated) == (
        "failed",
        "partial",
        True,
    )
    assert message.finished_at is not None


def test_deleting_a_conversation_cancels_its_unfinished_reply_tasks(
    alice, no_publish, monkeypatch
):
    revoked = []
    monkeypatch.setattr(
        "tasks_app.workers.revoke", lambda celery_id, terminate: revoked.append(1)
    )
    conversation = conversations.create_conversation(alice)
    record = conversations.post_message(conversation, "q").task

    conversations.delete_conversation(conversation)

    assert not Conversation.objects.exists() and not Message.objects.exists()
    assert TaskRecord.objects.get(pk=record.pk).state == "REVOKED"


def test_the_prompt_has_the_system_prompt_and_recent_history_up_to_the_question(
    alice, no_publish
):
    conversation = conversations.create_conversation(
        alice, max_history=3, system_prompt="Be brief."
    )
    for n in range(3):
        sub = conversations.post_message(conversation, f"q{n}")
        conversations.begin_reply(sub.assistant_message.pk, started_at=timezone.now())
        if n == 1:  # a failed reply is left out of the history
            conversations.fail_reply(sub.assistant_message.pk, error="x")
            continue
        finish(sub.assistant_message.pk, f"a{n}")
    question = conversations.post_message(conversation, "q3")
    # a question posted after this one must not leak into its prompt
    conversations.post_message(conversation, "later")

    prompt = replies.build_prompt(question.assistant_message)

    assert prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "q3"},
    ]


def test_cleaning_up_an_old_reply_task_keeps_the_reply(alice, no_publish):
    # The usage ledger outlives the task ledger's retention.
    conversation = conversations.create_conversation(alice)
    submission = conversations.post_message(conversation, "q")
    old = timezone.now() - timezone.timedelta(days=400)
    TaskRecord.objects.filter(pk=submission.task.pk).update(
        state="SUCCESS", finished_at=old
    )

    report = maintenance.cleanup_expired()

    assert report["records"] == 1
    reply = Message.objects.get(pk=submission.assistant_message.pk)
    assert reply.task_id is None
