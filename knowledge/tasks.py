"""Thin task wrappers around knowledge.services (queue knowledge_default)."""

from __future__ import annotations

from django.conf import settings

from claw.celery import app
from knowledge import services
from knowledge.embeddings import EmbeddingUnavailable


@app.task(
    name=services.VECTORIZE,
    bind=True,
    autoretry_for=(EmbeddingUnavailable,),
    max_retries=3,
    retry_backoff=settings.KNOWLEDGE_RETRY_BACKOFF,
    retry_backoff_max=300,
    retry_jitter=True,
    soft_time_limit=300,
    time_limit=settings.LONGEST_TIME_LIMIT,
    # Per worker process group, not cluster-wide (Celery's rate_limit; README).
    rate_limit=settings.KNOWLEDGE_VECTORIZE_RATE_LIMIT or None,
)
def vectorize_document_task(
    self, document_id: int, *, reuse: bool = True, raise_on_failure: bool = True
) -> dict:
    """Vectorize one document; see services.vectorize_document.

    A document that fails for good raises VectorizeFailed (the record ends
    FAILURE), unless raise_on_failure is False: chord members of
    update_knowledge_base return the failure as their outcome instead, because a
    raising member would fail the whole chord before its callback could report
    which documents failed.
    """
    final = self.request.retries >= self.max_retries
    try:
        return services.vectorize_document(
            document_id, reuse=reuse, final_attempt=final
        )
    except services.VectorizeFailed as exc:
        if raise_on_failure:
            raise
        return exc.outcome
