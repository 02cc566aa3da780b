"""Thin task wrappers around knowledge.services (queue knowledge_default, or
knowledge_remote for vectorizing with a remote embedding endpoint)."""

from __future__ import annotations

import time

from django.conf import settings

from claw.celery import app
from knowledge import services, vectorizing
from knowledge.embeddings import EmbeddingUnavailable
from knowledge.models import Document
from tasks_app import fanout, retries
from tasks_app import services as ledger
from tasks_app.progress import report_progress
from tasks_app.ratelimit import RateLimited

# Tasks that replace themselves with a chord and wait for it under their own id
# (update_knowledge_base, generate_document_from_outline).
FAN_OUT = fanout.parent_options(
    soft_time_limit=settings.KNOWLEDGE_UPDATE_SOFT_TIME_LIMIT,
    time_limit=settings.KNOWLEDGE_UPDATE_TIME_LIMIT,
)


VECTORIZE_RETRIES = 3  # of transient embedding errors (deferrals have their own)


@app.task(
    name=services.VECTORIZE,
    bind=True,
    # Celery counts deferrals as retries, and the ledger stops an attempt after
    # max_retries + CLAW_MAX_REDELIVERIES + 1 deliveries: room for both.
    max_retries=VECTORIZE_RETRIES + settings.KNOWLEDGE_MAX_DEFERRALS,
    soft_time_limit=settings.KNOWLEDGE_VECTORIZE_SOFT_TIME_LIMIT,
    time_limit=settings.KNOWLEDGE_VECTORIZE_TIME_LIMIT,
)
def vectorize_document_task(
    self,
    document_id: int,
    *,
    reuse: bool = True,
    raise_on_failure: bool = True,
    update: str | None = None,
    failures: int = 0,
) -> dict:
    """Vectorize one document; see vectorizing.vectorize_document.

    1. Over the cluster-wide KNOWLEDGE_VECTORIZE_RATE_LIMIT the run is deferred
       to a later window: a Celery retry that is not a failure, up to
       KNOWLEDGE_MAX_DEFERRALS (then the document fails).
    2. A transient embedding error retries with backoff, at most
       VECTORIZE_RETRIES times (counted in failures).
    3. A document that fails for good raises VectorizeFailed (the record ends
       FAILURE), unless raise_on_failure is False: chord members of
       update_knowledge_base return the failure as their outcome instead,
       because a raising member fails the whole chord before its callback can
       say which documents failed.

    update is the Celery id of that update: its record gets the overall
    progress, and a cancelled update skips the documents not started yet.
    """
    # before anything changes, even the rate limit's count
    services.ensure_owned(document_id=document_id, update=update)
    if update and ledger.is_cancel_requested(update):
        return {"document_id": document_id, "status": "skipped"}
    slot = None
    try:
        slot = vectorizing.take_vectorize_slot()
        # Celery's soft time limit needs prefork; on the threads pool
        # (knowledge_remote) the same limit is a deadline checked between batches.
        deadline = time.monotonic() + self.soft_time_limit
        outcome = vectorizing.vectorize_document(
            document_id,
            reuse=reuse,
            final_attempt=failures >= VECTORIZE_RETRIES,
            deadline=deadline,
        )
    except RateLimited as exc:
        if self.request.retries - failures < settings.KNOWLEDGE_MAX_DEFERRALS:
            raise self.retry(
                countdown=exc.retry_in, max_retries=self.request.retries + 1, exc=exc
            ) from None
        outcome = _gave_up(document_id, exc, raise_on_failure)
    except EmbeddingUnavailable as exc:  # not the final attempt
        raise self.retry(
            kwargs={**(self.request.kwargs or {}), "failures": failures + 1},
            countdown=retries.backoff(
                failures,
                base=settings.KNOWLEDGE_RETRY_BACKOFF,
                maximum=300,
                full_jitter=True,
            ),
            max_retries=self.request.retries + 1,
            exc=exc,
        ) from None
    except services.VectorizeFailed as exc:
        if raise_on_failure:
            raise
        outcome = exc.outcome
    if slot is not None:
        outcome["started_at"] = slot.at  # when the rate limit let it start
    if update:
        vectorizing.report_update_progress(update)
    return outcome


def _gave_up(document_id: int, exc: Exception, raise_on_failure: bool) -> dict:
    failure = vectorizing.vectorize_failed(document_id, exc)
    if raise_on_failure:
        raise failure
    return failure.outcome


@app.task(name=services.UPDATE, bind=True, **FAN_OUT)
def update_knowledge_base_task(
    self, kb_id: int, mode: str = services.INCREMENTAL
) -> dict:
    """Re-vectorize a knowledge base's documents: one vectorize per document as
    a chord whose callback summarises them.

    The task replaces itself with the chord (Task.replace): the callback runs
    under this task's id, so this record stays STARTED with the overall progress
    while the documents are vectorized and ends with the callback's outcome,
    FAILURE naming the failed documents if any failed. Members never raise for a
    failed document; if one fails outright anyway (killed at its hard time limit)
    Celery fails the chord, and the errback ends this record FAILURE instead of
    leaving it waiting. Nothing to do (an empty knowledge base) finishes at once.
    """
    document_ids = vectorizing.plan_update(kb_id, mode)
    if document_ids is None:
        return {"knowledge_base": kb_id, "mode": mode, "status": "missing"}
    if not document_ids:
        return vectorizing.finish_update([], kb_id=kb_id, mode=mode)
    report_progress(0, len(document_ids), f"vectorizing {len(document_ids)} documents")
    queue = services.vectorize_queue(kb_id)
    members = [
        vectorize_document_task.si(
            document_id,
            reuse=mode != services.REBUILD,
            raise_on_failure=False,
            update=self.request.id,
        ).set(queue=queue, headers=ledger.target_header(Document(pk=document_id)))
        for document_id in document_ids
    ]
    return fanout.replace_with_chord(self, members, update_callback(kb_id, mode))


def update_callback(kb_id: int, mode: str):
    """The chord callback of an update, with the errback for a broken chord."""
    return fanout.chord_callback(
        finish_update_task.s(kb_id=kb_id, mode=mode), update_broken_task
    )


@app.task(name="knowledge.finish_knowledge_base_update")
def finish_update_task(outcomes: list[dict], *, kb_id: int, mode: str) -> dict:
    return vectorizing.finish_update(outcomes, kb_id=kb_id, mode=mode)


# Ends an update whose chord broke, naming the knowledge base's failed documents.
update_broken_task = fanout.errback_task(
    "knowledge.knowledge_base_update_broken",
    lambda parent, kwargs, error: vectorizing.fail_update(
        parent, kb_id=kwargs.get("kb_id"), error=error
    ),
)


@app.task(
    name=services.DELETE_VECTORS,
    max_retries=2,
)
def delete_knowledge_vectors_task(
    kb_id: int | None = None, document_id: int | None = None
) -> dict:
    return vectorizing.delete_vectors(kb_id=kb_id, document_id=document_id)
