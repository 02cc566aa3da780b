"""Vectorizing, knowledge-base updates and deleting vectors: the worker side of
knowledge, which the tasks in knowledge/tasks.py wrap thinly. Editing knowledge
bases and documents (and submitting these tasks) is knowledge/services.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import F, Min, Q
from django.utils import timezone

from knowledge import embeddings
from knowledge.chunking import TextChunk, chunk_text
from knowledge.common import (
    HASH_LOOKUP_BATCH,
    INCREMENTAL,
    MODES,
    REBUILD,
    VECTORIZE,
    InvalidInput,
    Status,
    UpdateFailed,
    VectorizeFailed,
    bump_version,
    ensure_owned,
    ids_of,
    provider_for,
)
from knowledge.embeddings import EmbeddingUnavailable
from knowledge.models import Chunk, Document, KnowledgeBase, content_hash
from tasks_app import fanout, ownership, ratelimit
from tasks_app.models import TaskRecord
from tasks_app.progress import TaskCancelled, report_progress

logger = logging.getLogger(__name__)

# --- vectorizing ---------------------------------------------------------------


@dataclass
class Plan:
    """What vectorizing one document needs: its chunks and which to embed."""

    pieces: list[TextChunk]
    hashes: list[str]
    vectors: dict[str, bytes]  # content hash -> float32 bytes, reused or new
    to_embed: dict[str, str]  # content hash -> text, not embedded yet

    @property
    def reused(self) -> int:
        return sum(1 for chunk_hash in self.hashes if chunk_hash not in self.to_embed)


def _claim(document_id: int) -> Document | None:
    updated = Document.objects.filter(pk=document_id).update(status=Status.VECTORIZING)
    if not updated:
        return None
    return Document.objects.select_related("knowledge_base").get(pk=document_id)


def stored_vectors(hashes: set[str], model_name: str, dimension: int) -> dict:
    """Vectors already computed for these chunk texts with this model, any document.

    One chunk per hash (the lowest id), found through the chunk_hash index
    (content_hash, model_name): a boilerplate paragraph shared by thousands of
    documents must not load thousands of copies of its vector.
    """
    found: dict[str, bytes] = {}
    wanted = sorted(hashes)
    for i in range(0, len(wanted), HASH_LOOKUP_BATCH):
        firsts = (
            Chunk.objects.filter(
                content_hash__in=wanted[i : i + HASH_LOOKUP_BATCH],
                model_name=model_name,
                dimension=dimension,
                embedding__isnull=False,
            )
            .values("content_hash")
            .annotate(first=Min("id"))
            .values_list("first", flat=True)
        )
        rows = Chunk.objects.filter(pk__in=list(firsts)).values_list(
            "content_hash", "embedding"
        )
        found.update((chunk_hash, bytes(blob)) for chunk_hash, blob in rows)
    return found


def plan_document(document: Document, provider, *, reuse: bool) -> Plan:
    pieces = chunk_text(
        document.content,
        size=settings.KNOWLEDGE_CHUNK_SIZE,
        overlap=settings.KNOWLEDGE_CHUNK_OVERLAP,
    )
    hashes = [content_hash(piece.text) for piece in pieces]
    vectors = (
        stored_vectors(set(hashes), provider.model_name, provider.dimension)
        if reuse
        else {}
    )
    to_embed = {
        chunk_hash: piece.text
        for chunk_hash, piece in zip(hashes, pieces, strict=True)
        if chunk_hash not in vectors
    }
    return Plan(pieces, hashes, vectors, to_embed)


def embed_missing(plan: Plan, provider, *, deadline: float | None = None) -> None:
    """Embed plan.to_embed in batches, reporting progress after each one.

    Runs outside any transaction: a slow provider must not hold row locks.
    deadline (time.monotonic()) is checked before each batch: on the threads pool
    Celery has no soft time limit, so this ends a run as the soft limit would on
    prefork (each call waits at most EMBEDDING_TIMEOUT on its own).
    """
    items = list(plan.to_embed.items())
    batch = max(settings.EMBEDDING_BATCH_SIZE, 1)
    for start in range(0, len(items), batch):
        if deadline is not None and time.monotonic() >= deadline:
            raise SoftTimeLimitExceeded(
                f"time limit reached after embedding {start} of {len(items)} chunks"
            )
        part = items[start : start + batch]
        vectors = embeddings.embed_with(provider, [text for _, text in part])
        for (chunk_hash, _), vector in zip(part, vectors, strict=True):
            plan.vectors[chunk_hash] = vector.astype("<f4").tobytes()
        done = min(start + batch, len(items))
        report_progress(done, len(items), f"embedded {done} of {len(items)} chunks")


def _unchanged(document_id: int, plan: Plan, model_name: str) -> bool:
    stored = list(
        Chunk.objects.filter(document_id=document_id, embedding__isnull=False)
        .order_by("position")
        .values_list("content_hash", "start", "end", "model_name")
    )
    wanted = [
        (chunk_hash, piece.start, piece.end, model_name)
        for chunk_hash, piece in zip(plan.hashes, plan.pieces, strict=True)
    ]
    return stored == wanted


def write_chunks(document: Document, plan: Plan, provider, *, vectorized_hash: str):
    """Replace the document's chunks with the plan's, in one transaction.

    The document row is locked first, so two runs for one document (a redelivery,
    an update racing an API call) write one after the other, never interleaved.
    Returns False if the document was deleted meanwhile.
    """
    with transaction.atomic():
        if not Document.objects.select_for_update().filter(pk=document.pk).exists():
            return False
        if not _unchanged(document.pk, plan, provider.model_name):
            Chunk.objects.filter(document_id=document.pk).delete()
            Chunk.objects.bulk_create(
                [
                    Chunk(
                        document_id=document.pk,
                        knowledge_base_id=document.knowledge_base_id,
                        position=piece.position,
                        text=piece.text,
                        start=piece.start,
                        end=piece.end,
                        content_hash=chunk_hash,
                        embedding=plan.vectors[chunk_hash],
                        model_name=provider.model_name,
                        dimension=provider.dimension,
                    )
                    for chunk_hash, piece in zip(plan.hashes, plan.pieces, strict=True)
                ],
                batch_size=1000,
            )
            bump_version(document.knowledge_base_id)
        Document.objects.filter(pk=document.pk).update(
            status=Status.READY,
            chunk_count=len(plan.pieces),
            error="",
            vectorized_hash=vectorized_hash,
            last_vectorized_at=timezone.now(),
        )
    return True


def _mark(document_id: int, status: str, error: str) -> None:
    Document.objects.filter(pk=document_id).update(status=status, error=error[:5000])


def vectorize_document(
    document_id: int,
    *,
    reuse: bool = True,
    final_attempt: bool = True,
    deadline: float | None = None,
) -> dict:
    """Chunk, embed and store one document; the body of knowledge.vectorize_document.

    1. Claim: the document becomes "vectorizing" (a missing one is skipped).
    2. Chunk the content as it is now; chunks whose (content hash, model) already
       has a vector anywhere are reused, unless reuse is False (rebuild).
    3. Embed the rest in batches, outside any transaction.
    4. Replace the chunks and mark the document ready in one transaction, with
       vectorized_hash = the content hash read in step 1: an edit made meanwhile
       leaves the two different, so the next incremental update picks it up.

    Running it twice leaves the same chunks. A transient provider error propagates
    for the task to retry, except on the final attempt; any other failure marks the
    document failed with the error (old chunks stay searchable) and raises
    VectorizeFailed. Passing deadline (see embed_missing) is such a failure.
    """
    document = _claim(document_id)
    if document is None:
        return {"document_id": document_id, "status": "missing"}
    try:
        provider = provider_for(document.knowledge_base)
        plan = plan_document(document, provider, reuse=reuse)
        embed_missing(plan, provider, deadline=deadline)
        written = write_chunks(
            document, plan, provider, vectorized_hash=document.content_hash
        )
    except TaskCancelled:
        _mark(document_id, Status.PENDING, "cancelled while vectorizing")
        raise
    except EmbeddingUnavailable as exc:
        if not final_attempt:
            _mark(document_id, Status.PENDING, f"will retry: {exc}")
            raise
        raise vectorize_failed(document_id, exc) from exc
    except Exception as exc:
        raise vectorize_failed(document_id, exc) from exc
    if not written:
        return {"document_id": document_id, "status": "missing"}
    return {
        "document_id": document_id,
        "status": "ready",
        "chunks": len(plan.pieces),
        "embedded": len(plan.to_embed),
        "reused": plan.reused,
    }


def take_vectorize_slot() -> ratelimit.Slot | None:
    """One start under KNOWLEDGE_VECTORIZE_RATE_LIMIT (None when no limit is set);
    raises ratelimit.RateLimited when the cluster has used this window's starts."""
    return ratelimit.take_slot(VECTORIZE, settings.KNOWLEDGE_VECTORIZE_RATE_LIMIT)


def vectorize_failed(document_id: int, exc: Exception) -> VectorizeFailed:
    """Mark the document failed with exc's error; the VectorizeFailed to raise."""
    if isinstance(exc, embeddings.EmbeddingError):
        error = str(exc)
    elif isinstance(exc, SoftTimeLimitExceeded):
        # billiard's str() repeats the class name and the args tuple
        error = "Time limit exceeded" + (f": {exc.args[0]}" if exc.args else "")
    else:
        error = f"{type(exc).__name__}: {exc}".rstrip(": ")
    _mark(document_id, Status.FAILED, error)
    logger.warning("Vectorizing document %s failed: %s", document_id, error)
    return VectorizeFailed(error, document_id)


# --- knowledge-base updates ----------------------------------------------------


def update_candidates(kb_id: int, mode: str):
    """The documents an update of this mode vectorizes, in id order (read only).

    incremental: documents whose content changed since their vectors were built,
    that have none, or that are not ready (failed, or stuck); full and rebuild:
    every document.
    """
    if mode not in MODES:
        raise InvalidInput(f"mode: must be one of {', '.join(MODES)}")
    documents = Document.objects.filter(knowledge_base_id=kb_id)
    if mode == INCREMENTAL:
        # Not ready covers failed documents and ones whose run died without a
        # word (killed at its hard time limit: left "vectorizing").
        documents = documents.filter(
            ~Q(vectorized_hash=F("content_hash")) | ~Q(status=Status.READY)
        )
    return documents.order_by("id")


def plan_update(kb_id: int, mode: str) -> list[int] | None:
    """Ids of the documents an update vectorizes; None if the kb is gone.

    incremental: documents whose content changed since their vectors were built,
    that have none, or that are not ready (failed, or stuck); full: every document (unchanged chunks reuse
    their vectors); rebuild: drop every vector first, then every document.
    """
    ensure_owned(kb_id=kb_id)
    documents = update_candidates(kb_id, mode)
    if not KnowledgeBase.objects.filter(pk=kb_id).exists():
        return None
    if mode == REBUILD:
        delete_vectors(kb_id=kb_id)
    ids = list(documents.values_list("id", flat=True))
    Document.objects.filter(pk__in=ids).exclude(status=Status.VECTORIZING).update(
        status=Status.PENDING
    )
    return ids


def report_update_progress(update_celery_id: str) -> None:
    """Count one more finished document on the update's record (a chord member
    calls this when it is done). About 100 writes per update at most."""
    parent = (
        TaskRecord.objects.filter(celery_id=update_celery_id)
        .values("id", "progress_total")
        .first()
    )
    if parent is None or not parent["progress_total"]:
        return
    total = parent["progress_total"]
    finished = TaskRecord.objects.filter(
        parent_id=parent["id"], name=VECTORIZE, state__in=TaskRecord.FINAL_STATES
    ).count()
    done = min(finished + 1, total)  # + this member, whose record is not final yet
    if done < total and done % max(1, total // 100):
        return
    fanout.report_parent(
        update_celery_id, done, total, f"{done} of {total} documents vectorized"
    )


def finish_update(outcomes: list[dict], *, kb_id: int, mode: str) -> dict:
    """Summarise the chord members' outcomes; raise UpdateFailed naming the failed
    documents, so the update's record ends FAILURE with that summary."""
    ensure_owned(kb_id=kb_id)
    summary = {
        "knowledge_base": kb_id,
        "mode": mode,
        "documents": len(outcomes),
        "vectorized": [o["document_id"] for o in outcomes if o["status"] == "ready"],
        "failed": [o["document_id"] for o in outcomes if o["status"] == "failed"],
        "skipped": sum(1 for o in outcomes if o["status"] in ("missing", "skipped")),
        "chunks": sum(o.get("chunks", 0) for o in outcomes),
        "embedded": sum(o.get("embedded", 0) for o in outcomes),
        "reused": sum(o.get("reused", 0) for o in outcomes),
    }
    if summary["failed"]:
        errors = {o["document_id"]: o["error"] for o in outcomes if "error" in o}
        raise UpdateFailed(
            f"{len(errors)} of {len(outcomes)} documents failed: "
            + _name_documents(errors)
        )
    return summary


def _name_documents(errors: dict[int, str], limit: int = 20) -> str:
    titles = dict(
        Document.objects.filter(pk__in=list(errors)[:limit]).values_list("id", "title")
    )
    named = [
        f"#{pk} {titles.get(pk, '(deleted)')!r}: {error[:300]}"
        for pk, error in list(errors.items())[:limit]
    ]
    more = len(errors) - limit
    return "; ".join(named) + (f"; and {more} more" if more > 0 else "")


def fail_update(update_celery_id: str, *, kb_id: int | None, error: str) -> None:
    """End an update whose chord broke (a member failed outright, e.g. killed at
    its hard time limit), so its record never waits for a callback that will not
    run. Names the knowledge base's failed documents."""
    # Called in-process by Celery (not the update's own run): the update's
    # record says whose knowledge base it may be.
    owner = KnowledgeBase.objects.filter(pk=kb_id).values_list("owner_id")
    ownership.ensure_owned(
        *ids_of(owner), what=f"knowledge base {kb_id}", celery_id=update_celery_id
    )
    failed = dict(
        Document.objects.filter(knowledge_base_id=kb_id, status=Status.FAILED)
        .order_by("id")
        .values_list("id", "error")
    )
    detail = f"; failed documents: {_name_documents(failed)}" if failed else ""
    fanout.end_parent(update_celery_id, error=f"Update stopped: {error}{detail}")


# --- deleting vectors ----------------------------------------------------------

DELETE_BATCH_CHUNKS = 5000
DELETE_BATCH_DOCUMENTS = 500


def _delete_batches(documents) -> list[list[int]]:
    """Document ids in batches of about DELETE_BATCH_CHUNKS chunks."""
    batches: list[list[int]] = [[]]
    size = 0
    for pk, chunks in documents.order_by("id").values_list("id", "chunk_count"):
        if batches[-1] and (
            size + chunks > DELETE_BATCH_CHUNKS
            or len(batches[-1]) >= DELETE_BATCH_DOCUMENTS
        ):
            batches.append([])
            size = 0
        batches[-1].append(pk)
        size += chunks
    return [batch for batch in batches if batch]


def delete_vectors(*, kb_id: int | None = None, document_id: int | None = None):
    """Delete the chunks of a knowledge base or one document, in batches.

    Each batch is one short transaction that locks its documents (as vectorizing
    does), deletes their chunks, marks them pending without vectors and bumps the
    version, so search never sees a half-deleted document.
    """
    if (kb_id is None) == (document_id is None):
        raise InvalidInput("give kb_id or document_id")
    ensure_owned(kb_id=kb_id, document_id=document_id)
    documents = (
        Document.objects.filter(knowledge_base_id=kb_id)
        if kb_id is not None
        else Document.objects.filter(pk=document_id)
    )
    batches = _delete_batches(documents)
    total = sum(len(batch) for batch in batches)
    done = deleted = 0
    for batch in batches:
        with transaction.atomic():
            locked = list(
                Document.objects.select_for_update()
                .filter(pk__in=batch)
                .values_list("id", "knowledge_base_id")
            )
            count, _ = Chunk.objects.filter(document_id__in=batch).delete()
            Document.objects.filter(pk__in=batch).update(
                status=Status.PENDING, chunk_count=0, vectorized_hash="", error=""
            )
            for kb in {kb for _, kb in locked} if count else ():
                bump_version(kb)
        deleted += count
        done += len(batch)
        report_progress(done, total, f"deleted vectors of {done} of {total} documents")
    return {"documents": total, "chunks_deleted": deleted}
