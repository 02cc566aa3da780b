"""Thin task wrappers around claw.services, claw.replies and claw.conversations."""

from __future__ import annotations

import time

from django.conf import settings

from claw import conversations, replies, services
from claw.celery import app
from claw.llm import LLMUnavailable
from claw.notifications import TransientDeliveryError
from knowledge.services import EmbeddingUnavailable
from tasks_app import retries
from tasks_app.ratelimit import RateLimited


@app.task(
    name="claw.send_notification",
    bind=True,
    autoretry_for=(TransientDeliveryError,),
    max_retries=3,
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
)
def send_notification(self, notification_id: int) -> str:
    final = self.request.retries >= self.max_retries
    return services.send(notification_id, final_attempt=final)


def backoff(failures: int) -> float:
    """The AI providers' backoff (AI_RETRY_BACKOFF, at most AI_RETRY_BACKOFF_MAX)."""
    return retries.backoff(
        failures, base=settings.AI_RETRY_BACKOFF, maximum=settings.AI_RETRY_BACKOFF_MAX
    )


@app.task(
    name="claw.generate_ai_response",
    bind=True,
    # Celery counts deferrals as retries, and the ledger stops an attempt after
    # max_retries + CLAW_MAX_REDELIVERIES + 1 deliveries: room for both. Transient
    # errors get their own budget of AI_TRANSIENT_RETRIES (the failures argument).
    max_retries=settings.AI_TRANSIENT_RETRIES + settings.AI_MAX_DEFERRALS,
    soft_time_limit=settings.AI_REPLY_SOFT_TIME_LIMIT,
    time_limit=settings.AI_REPLY_TIME_LIMIT,
)
def generate_ai_response(self, message_id: int, failures: int = 0) -> dict:
    """Write the reply in assistant message message_id (see claw.replies.generate).

    1. A reply already done (a redelivery) or deleted is skipped.
    2. Over the cluster-wide rate limit, or over its owner's fair share of it
       while other users ask too, the run is deferred to a later window: a
       Celery retry that does not count as a failure (deferrals = retries -
       failures), up to AI_MAX_DEFERRALS.
    3. Transient provider errors, and transient errors embedding the question for
       search, retry with backoff, at most AI_TRANSIENT_RETRIES times; anything
       else fails the reply at once (conversations.reply_ended).

    Both budgets are counted here, so each retry passes Celery a max_retries it
    cannot exceed. First of all, the message must be the record owner's.
    """
    conversations.ensure_reply_owned(message_id)
    if not conversations.needs_reply(message_id):
        return {"message_id": message_id, "status": "skipped"}
    deadline = time.monotonic() + settings.AI_REPLY_DEADLINE
    deferrals = self.request.retries - failures
    try:
        slot = replies.take_start_slot(message_id)
    except RateLimited as exc:
        if deferrals >= settings.AI_MAX_DEFERRALS:
            raise
        raise self.retry(
            countdown=exc.retry_in, max_retries=self.request.retries + 1, exc=exc
        ) from None
    started_at = slot.at if slot else time.time()
    try:
        return replies.generate(message_id, started_at=started_at, deadline=deadline)
    except (LLMUnavailable, EmbeddingUnavailable) as exc:
        if failures >= settings.AI_TRANSIENT_RETRIES:
            raise
        conversations.wait_for_retry(message_id, error=str(exc))
        raise self.retry(
            args=[message_id],
            kwargs={"failures": failures + 1},
            countdown=backoff(failures),
            max_retries=self.request.retries + 1,
            exc=exc,
        ) from None
