"""The only writers of Conversation and Message: API, admin and the reply task all
come through here.

A reply's life: post_message stores the user message and a pending assistant
message and submits claw.generate_ai_response for it; the task moves the assistant
message pending -> generating -> done (or failed), rewriting the same row on every
run, so a redelivered or retried run never adds a second reply.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Case, Value, When
from django.utils import timezone

from claw.models import Conversation, Message
from tasks_app import live, ownership
from tasks_app import services as ledger
from tasks_app.lifecycle import Ended
from tasks_app.models import TaskRecord

TASK_NAME = "claw.generate_ai_response"
Status = Message.Status
Role = Message.Role


class DifferentRequest(Exception):
    """An idempotency key was first used for another conversation or content."""


class TooManyReplies(Exception):
    """The owner already has AI_MAX_REPLIES_IN_FLIGHT replies pending or generating."""


@dataclass(frozen=True)
class Submission:
    user_message: Message
    assistant_message: Message
    task: TaskRecord


# --- conversations ------------------------------------------------------------


def create_conversation(owner, *, knowledge_bases=(), **fields) -> Conversation:
    with transaction.atomic():
        conversation = Conversation.objects.create(owner=owner, **fields)
        conversation.knowledge_bases.set(knowledge_bases)
    return conversation


def update_conversation(
    conversation: Conversation, *, knowledge_bases=None, **fields
) -> Conversation:
    with transaction.atomic():
        for name, value in fields.items():
            setattr(conversation, name, value)
        conversation.save(update_fields=[*fields, "updated_at"])
        if knowledge_bases is not None:
            conversation.knowledge_bases.set(knowledge_bases)
    return conversation


def delete_conversation(conversation: Conversation) -> None:
    """Delete it with its messages, cancelling replies still being written.

    The tasks would find their message gone and stop anyway; cancelling frees the
    worker now and shows REVOKED in the ledger instead of a pointless run.
    """
    active = TaskRecord.objects.filter(
        pk__in=conversation.messages.exclude(task=None).values("task"),
        state__in=TaskRecord.ACTIVE_STATES,
    )
    with transaction.atomic():
        for record in active:
            # one that finished meanwhile needs no cancel
            with contextlib.suppress(ledger.InvalidTransition):
                ledger.cancel(record)
        conversation.delete()


# --- submitting a message ---------------------------------------------------------


def post_message(
    conversation: Conversation,
    content: str,
    *,
    idempotency_key: str | None = None,
    queue: str | None = None,
) -> Submission:
    """Store the user message and a pending assistant reply; submit the reply task.

    One transaction: a failure leaves neither message nor task behind, and the task
    is published only after commit (services.submit). The task belongs to the
    conversation's owner (who can then follow it in the task API, whoever posted),
    and so does the idempotency key.
    """
    with transaction.atomic():
        _claim_reply_slot(conversation.owner_id)
        question = Message.objects.create(
            conversation=conversation, role=Role.USER, content=content
        )
        reply = Message.objects.create(
            conversation=conversation,
            role=Role.ASSISTANT,
            status=Status.PENDING,
            reply_to=question,
        )
        record = ledger.submit(
            TASK_NAME,
            args=[reply.pk],
            owner=conversation.owner,
            target=reply,
            idempotency_key=idempotency_key,
            queue=queue,
        )
        reply.task = record
        reply.save(update_fields=["task"])
        Conversation.objects.filter(pk=conversation.pk).update(
            updated_at=timezone.now()
        )
    return Submission(question, reply, record)


def _claim_reply_slot(owner_id: int) -> None:
    """Refuse a reply past the owner's cap of replies in flight.

    Must run in the accepting transaction. Locking the owner's user row makes
    concurrent posts of one user count one after the other (PostgreSQL; SQLite's
    IMMEDIATE transactions serialise writers already), so the cap is exact.
    """
    cap = settings.AI_MAX_REPLIES_IN_FLIGHT
    if not cap:
        return
    get_user_model().objects.select_for_update().filter(pk=owner_id).exists()
    in_flight = Message.objects.filter(
        conversation__owner_id=owner_id,
        role=Role.ASSISTANT,
        status__in=Message.ACTIVE_STATUSES,
    )
    if in_flight.count() >= cap:
        raise TooManyReplies(
            f"{cap} replies are already being generated for you; "
            "wait for one to finish."
        )


def replay(record: TaskRecord, conversation: Conversation, content: str) -> Submission:
    """The submission an idempotency key already made; DifferentRequest if that
    was for another conversation or another message."""
    reply = (
        Message.objects.select_related("reply_to")
        .filter(pk=record.object_id, role=Role.ASSISTANT)
        .first()
    )
    if (
        reply is None
        or reply.conversation_id != conversation.pk
        or reply.reply_to is None
        or reply.reply_to.content != content
    ):
        raise DifferentRequest(
            "This Idempotency-Key was used for a different conversation or message."
        )
    return Submission(reply.reply_to, reply, record)


# --- the reply task's writes ------------------------------------------------------


def ensure_reply_owned(message_id: int, *, celery_id: str | None = None) -> None:
    """Raise ownership.NotOwned unless the message's conversation belongs to the
    owner of the running reply task (or of the record whose attempt is
    celery_id), before it changes anything."""
    owner = Message.objects.filter(pk=message_id).values_list(
        "conversation__owner_id", flat=True
    )
    ownership.ensure_owned(*owner, what=f"message {message_id}", celery_id=celery_id)


def begin_reply(message_id: int, *, started_at: datetime) -> Message | None:
    """Start (or restart) writing a reply: generating, with its text emptied.

    A redelivered run after a worker died, or a retry, starts again from nothing
    on the same row. None if the message is gone or already done.
    """
    updated = (
        Message.objects.filter(pk=message_id, role=Role.ASSISTANT)
        .exclude(status=Status.DONE)
        .update(
            status=Status.GENERATING,
            content="",
            truncated=False,
            error="",
            passages=[],
            started_at=started_at,
            finished_at=None,
            latency_ms=None,
        )
    )
    if not updated:
        return None
    # A rerun writes from the first character again; earlier chunks would mislead.
    live.delete_stream(delta_key(message_id))
    _ring(message_id)
    return Message.objects.select_related("conversation", "reply_to").get(pk=message_id)


def needs_reply(message_id: int) -> bool:
    return (
        Message.objects.filter(pk=message_id, role=Role.ASSISTANT)
        .exclude(status=Status.DONE)
        .exists()
    )


def save_passages(message_id: int, passages: list[dict]) -> None:
    Message.objects.filter(pk=message_id).update(passages=passages)
    _ring(message_id)


# --- live readers (claw.streams) ----------------------------------------------------


def delta_key(message_id: int) -> str:
    """The Redis Stream holding a reply's chunks for readers that join late."""
    return f"claw:live:reply:{message_id}"


def stream_piece(
    message_id: int,
    owner_id: int,
    conversation_id: int,
    run: str,
    offset: int,
    text: str,
) -> None:
    """Publish one chunk of a reply as the provider streamed it: text is the
    reply's content[offset:offset + len(text)] in the run that began at `run`
    (the message's started_at, ISO 8601: a rerun writes from offset 0 again)."""
    live.publish(
        {
            "k": "delta",
            "to": [("msg", message_id)],
            "m": message_id,
            "u": owner_id,
            "c": conversation_id,
            "a": run,
            "o": offset,
            "t": text,
            "w": round(time.time(), 6),  # when the worker received it
        },
        stream_key=delta_key(message_id),
    )


def _ring(message_id: int) -> None:
    """Tell a reply's live readers that its row changed (passages, its end)."""
    live.publish({"k": "msg", "to": [("msg", message_id)], "m": message_id})


def save_partial(message_id: int, text: str) -> bool:
    """Store the text streamed so far; False if the reply is no longer being
    written (deleted, or stopped by a cancel)."""
    return bool(
        Message.objects.filter(pk=message_id, status=Status.GENERATING).update(
            content=text
        )
    )


def finish_reply(
    message_id: int,
    *,
    text: str,
    truncated: bool,
    provider: str,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    tokens_estimated: bool,
    latency_ms: int,
) -> bool:
    finished = bool(
        Message.objects.filter(pk=message_id, status=Status.GENERATING).update(
            status=Status.DONE,
            content=text,
            truncated=truncated,
            provider=provider,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            tokens_estimated=tokens_estimated,
            latency_ms=latency_ms,
            error="",
            finished_at=timezone.now(),
        )
    )
    if finished:
        _ring(message_id)
    return finished


def wait_for_retry(message_id: int, *, error: str) -> None:
    """A transient provider error: pending again until the retry, saying why."""
    Message.objects.filter(pk=message_id, status__in=Message.ACTIVE_STATUSES).update(
        status=Status.PENDING, error=error[:2000]
    )
    _ring(message_id)


def reply_ended(ended: Ended) -> None:
    """The reply task's lifecycle handler (FAILURE, REVOKED): keeps the message in
    step with a run that ended outside the body, which nobody else will mark.

    Refused by the ledger (cancelled while queued, or stopped after its worker
    process died too often): "Not generated: task <why>."; terminated while it
    ran: "Cancelled while generating."; failed after its retries: the error
    (LLMRejected carries the provider's own message).
    """
    if not ended.record.args:
        return
    # stored arguments may have been edited (staff): only the owner's message
    ensure_reply_owned(ended.record.args[0], celery_id=ended.record.celery_id)
    if ended.refusal or (ended.state == TaskRecord.State.REVOKED and not ended.started):
        error = f"Not generated: task {ended.refusal or 'cancelled'}."
    elif ended.state == TaskRecord.State.REVOKED:
        error = "Cancelled while generating."
    else:
        error = ended.error
    fail_reply(ended.record.args[0], error=error)


def fail_reply(message_id: int, *, error: str, text: str | None = None) -> bool:
    """Mark a reply that is still pending or generating as failed.

    What had streamed stays (marked truncated); a reply that already ended keeps
    its outcome, so a late cancel or a second failure report changes nothing.
    """
    updates = {"status": Status.FAILED, "error": error[:2000]}
    updates["finished_at"] = timezone.now()
    if text is not None:
        updates["content"] = text
        updates["truncated"] = bool(text)
    else:
        # One statement: a reader must never see the failure without its flag.
        updates["truncated"] = Case(
            When(content="", then=Value(False)), default=Value(True)
        )
    rows = Message.objects.filter(pk=message_id, status__in=Message.ACTIVE_STATUSES)
    failed = bool(rows.update(**updates))
    if failed:
        _ring(message_id)
    return failed
