"""Writing one AI reply: prompt, retrieval, streaming into the message, usage.

The reply task (claw.tasks.generate_ai_response) calls generate(); every write
goes through claw.conversations.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db.models import Q

from claw import conversations, llm
from claw.models import Conversation, Message
from knowledge.services import SearchHit, search_many
from tasks_app import ratelimit, retries
from tasks_app.progress import TaskCancelled, report_progress

RATE_LIMIT_KEY = "claw.generate_ai_response"


def take_start_slot(message_id: int) -> ratelimit.Slot | None:
    """One start under AI_RATE_LIMIT (None when no limit is set) for the reply's
    owner, within their fair share of it (ratelimit.take_fair); raises
    ratelimit.RateLimited when the cluster has used its starts of this window
    or the owner their share."""
    owner = (
        Message.objects.filter(pk=message_id)
        .values_list("conversation__owner_id", flat=True)
        .first()
    )
    return ratelimit.take_slot(RATE_LIMIT_KEY, settings.AI_RATE_LIMIT, user=owner or 0)


def generate(message_id: int, *, started_at: float, deadline: float) -> dict:
    """Write the assistant message message_id; return a summary for the result.

    1. begin: the message becomes generating with empty text (a redelivered or
       retried run rewrites the same row; a done or deleted one is left alone);
    2. the prompt: the system prompt, recent history up to the question, and the
       best passages of the conversation's knowledge bases;
    3. stream, saving the text every AI_STREAM_SAVE_INTERVAL and reporting
       progress (where a cancel stops it); a save that finds the database
       gone is skipped, and the final save waits for it
       (CLAW_DATABASE_OUTAGE_SECONDS), so the streamed text is kept;
    4. at the soft time limit or the deadline keep what streamed, truncated; with
       nothing streamed yet the error propagates and the reply fails.

    Provider errors propagate: the task retries LLMUnavailable, and its failure
    hook marks the reply failed with the provider's message.
    """
    # Latency is the whole run (retrieval, prompt, streaming, saving), which is
    # what the user waited; the offline extractive stream alone takes no time.
    clock = time.monotonic()
    begun = datetime.fromtimestamp(started_at, tz=UTC)
    message = conversations.begin_reply(message_id, started_at=begun)
    if message is None:
        return {"message_id": message_id, "status": "skipped"}
    conversation = message.conversation
    hits = retrieve(conversation, message.reply_to.content if message.reply_to else "")
    if hits:  # begin_reply emptied them
        conversations.save_passages(
            message_id, [citation(n, kb, hit) for n, (kb, hit) in enumerate(hits, 1)]
        )
    prompt = build_prompt(message)
    provider = llm.get_provider(
        conversation.provider,
        model=conversation.model,
        temperature=conversation.temperature,
    )
    completion = llm.Completion()
    stopped = _stream(
        provider,
        prompt,
        [passage(h) for _, h in hits],
        completion,
        message_id,
        deadline,
        publish=functools.partial(
            conversations.stream_piece,
            message_id,
            conversation.owner_id,
            conversation.pk,
            message.started_at.isoformat(),
        ),
    )
    _finish(message_id, completion, provider, prompt, stopped=stopped, clock=clock)
    return {
        "message_id": message_id,
        "status": Message.Status.DONE,
        "truncated": bool(stopped),
        "stopped": stopped,
        "characters": len(completion.text),
    }


def _finish(message_id, completion, provider, prompt, *, stopped: str, clock: float):
    """Store the reply's text, token usage and latency (the whole run's)."""
    latency_ms = max(1, round((time.monotonic() - clock) * 1000))
    prompt_text = "\n".join(m["content"] for m in prompt)
    # The text is in memory: wait here for a lost database rather than let the
    # task run again and stream the whole answer anew.
    retries.ride_out_database_outage(
        conversations.finish_reply,
        message_id,
        text=completion.text,
        truncated=bool(stopped),
        provider=provider.name,
        model=completion.model,
        prompt_tokens=completion.prompt_tokens or llm.estimate_tokens(prompt_text),
        completion_tokens=completion.completion_tokens
        or llm.estimate_tokens(completion.text),
        tokens_estimated=completion.estimated,
        latency_ms=latency_ms,
    )


def _stream(
    provider, prompt, passages, completion, message_id, deadline, *, publish=None
) -> str:
    """Consume the provider's stream into the message; return why it stopped
    early ("deadline", "soft_time_limit") or "".

    Each chunk goes to live readers as it arrives (publish(offset, text)); the
    row is written only every AI_STREAM_SAVE_INTERVAL.
    """
    last_save = time.monotonic()
    published = 0
    try:
        for _piece in provider.stream(
            prompt, passages=passages, completion=completion, deadline=deadline
        ):
            if publish is not None and len(completion.text) > published:
                publish(published, completion.text[published:])
                published = len(completion.text)
            now = time.monotonic()
            if now - last_save < settings.AI_STREAM_SAVE_INTERVAL:
                continue
            last_save = now
            try:
                if not conversations.save_partial(message_id, completion.text):
                    break  # deleted or stopped meanwhile; finish_reply will not apply
                report_progress(
                    len(completion.pieces), 0, f"{len(completion.text)} characters"
                )
            except retries.DATABASE_ERRORS:
                # The database is restarting (the save or the progress write found
                # it gone): keep streaming into memory and save at the next
                # interval (finish_reply waits for it), rather than let the task
                # run again and ask the model anew.
                retries.close_connections()
                continue
    except TaskCancelled:
        conversations.fail_reply(
            message_id, error="Cancelled while generating.", text=completion.text
        )
        raise
    except (llm.DeadlineExceeded, SoftTimeLimitExceeded) as exc:
        if not completion.text:
            raise
        return (
            "deadline" if isinstance(exc, llm.DeadlineExceeded) else "soft_time_limit"
        )
    return ""


# --- prompt and retrieval ---------------------------------------------------------


def build_prompt(message: Message) -> list[dict[str, str]]:
    """The system prompt, then the last max_history messages up to the question.

    Up to the question, not up to the reply: two questions posted at once each get
    a reply to their own question. Replies that failed or are still being written
    are left out.
    """
    conversation = message.conversation
    upto = message.reply_to_id or message.pk
    history = (
        conversation.messages.filter(pk__lte=upto)
        .filter(
            Q(role__in=[Message.Role.USER, Message.Role.SYSTEM])
            | Q(role=Message.Role.ASSISTANT, status=Message.Status.DONE)
        )
        .order_by("-id")
        .values("role", "content")[: max(1, conversation.max_history)]
    )
    prompt = [{"role": m["role"], "content": m["content"]} for m in reversed(history)]
    if conversation.system_prompt:
        prompt.insert(0, {"role": "system", "content": conversation.system_prompt})
    return prompt


def retrieve(conversation: Conversation, query: str) -> list[tuple[int, SearchHit]]:
    """The best AI_PASSAGES hits over every attached knowledge base, by score, as
    (knowledge base id, hit) pairs (knowledge.search.search_many)."""
    bases = list(conversation.knowledge_bases.all())
    if not bases or not query.strip():
        return []
    return search_many([(kb, None) for kb in bases], query, k=settings.AI_PASSAGES)


def passage(hit: SearchHit) -> llm.Passage:
    return llm.Passage(
        title=hit.document_title,
        text=hit.text,
        score=hit.score,
        ref=f"document {hit.document_id}, passage {hit.position + 1}",
    )


def citation(number: int, knowledge_base_id: int, hit: SearchHit) -> dict:
    return {
        "n": number,
        "knowledge_base": knowledge_base_id,
        "document": hit.document_id,
        "document_title": hit.document_title,
        "chunk": hit.chunk_id,
        "position": hit.position,
        "score": round(float(hit.score), 4),
        "text": hit.text,
    }
