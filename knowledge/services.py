"""The only writers of knowledge bases, documents and chunks.

Admin, API, tasks and other apps call these; the tasks in knowledge/tasks.py are
thin wrappers around vectorize_document, plan_update / finish_update and
delete_vectors.
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

from knowledge import embeddings, extract
from knowledge.chunking import TextChunk, chunk_text

# What other domains (conversations, writing) use of knowledge: they import this
# module only (tests/test_architecture.py), so these names are its public face.
from knowledge.chunking import sentence_spans as sentence_spans
from knowledge.embeddings import EmbeddingError as EmbeddingError
from knowledge.embeddings import EmbeddingUnavailable
from knowledge.models import Chunk, Document, KnowledgeBase, content_hash
from knowledge.search import SearchHit as SearchHit
from knowledge.search import search_many as search_many
from tasks_app import fanout, ownership, ratelimit
from tasks_app import services as ledger
from tasks_app.api.fields import BLANK
from tasks_app.models import TaskRecord
from tasks_app.progress import TaskCancelled, report_progress

logger = logging.getLogger(__name__)

VECTORIZE = "knowledge.vectorize_document"
REMOTE_QUEUE = "knowledge_remote"
UPDATE = "knowledge.update_knowledge_base"
DELETE_VECTORS = "knowledge.delete_knowledge_vectors"
INCREMENTAL, FULL, REBUILD = "incremental", "full", "rebuild"
# Providers whose new knowledge bases rank by hybrid fusion unless told otherwise:
# e5-small, whose fusion with BM25 lost no kind of question in bench_retrieval and
# won exact terms; hashing is lexical already.
HYBRID_BY_DEFAULT = frozenset({embeddings.E5_SMALL})
MODES = (INCREMENTAL, FULL, REBUILD)
Status = Document.Status
HASH_LOOKUP_BATCH = 500
# What "blank" means for names: the API's schema publishes the same set.


class InvalidInput(ValueError):
    """A value a caller supplied is not acceptable; the message names the field."""


class UpdateFailed(Exception):
    """Some documents of a knowledge-base update failed; the message names them."""


class VectorizeFailed(Exception):
    """A document could not be vectorized for good; it is marked failed."""

    # One positional argument, so Celery can rebuild it from its stored form
    # (otherwise the record shows an UnpickleableExceptionWrapper).
    def __init__(self, error: str, document_id: int | None = None):
        super().__init__(error)
        self.outcome = {"document_id": document_id, "status": "failed", "error": error}


# --- knowledge bases and documents ---------------------------------------------


def create_knowledge_base(
    owner,
    *,
    name: str,
    description: str = "",
    embedding_provider: str | None = None,
    embedding_model: str = "",
    embedding_dimension: int = 384,
    hybrid: bool | None = None,
) -> KnowledgeBase:
    """A new knowledge base; a blank model becomes the provider's default now, so
    the knowledge base keeps the model it was created with. No provider: the
    KNOWLEDGE_DEFAULT_PROVIDER setting's; hybrid unsaid: see default_hybrid."""
    if not name or not name.strip(BLANK):
        raise InvalidInput("name: must not be blank")
    embedding_provider = embedding_provider or settings.KNOWLEDGE_DEFAULT_PROVIDER
    provider = checked_provider(
        embedding_provider, embedding_model, embedding_dimension
    )
    return KnowledgeBase.objects.create(
        owner=owner,
        name=name.strip(BLANK),
        description=description,
        embedding_provider=embedding_provider,
        embedding_model=provider.model,
        embedding_dimension=embedding_dimension,
        hybrid=default_hybrid(embedding_provider) if hybrid is None else hybrid,
    )


def default_hybrid(provider: str) -> bool:
    """Whether a new knowledge base of this provider fuses BM25 into its ranking
    when its creator does not say: see the README's "e5-small, hybrid ranking and
    the default provider" for the measurements this follows."""
    return provider in HYBRID_BY_DEFAULT


def checked_provider(
    name: str, model: str, dimension: int, *, field: str = "embedding_provider"
) -> embeddings.Provider:
    """The provider for these settings; InvalidInput naming the field if unusable."""
    if name not in embeddings.PROVIDERS:
        choices = ", ".join(embeddings.PROVIDERS)
        raise InvalidInput(f"{field}: must be one of {choices}")
    if not 1 <= dimension <= embeddings.MAX_DIMENSION:
        raise InvalidInput(
            f"embedding_dimension: must be 1 to {embeddings.MAX_DIMENSION}"
        )
    try:
        return embeddings.get_provider(name, model=model, dimension=dimension)
    except embeddings.EmbeddingRejected as exc:
        raise InvalidInput(f"{field}: {exc}") from None


def change_provider(
    kb: KnowledgeBase, provider: str, *, owner=None, hybrid: bool | None = None
) -> TaskRecord:
    """Move a knowledge base to another embedding provider (its default model
    and, if it has one, its fixed dimension) and queue a rebuild of every vector.

    The settings change and the version bump commit together, and the rebuild is
    published after: until it has re-embedded a document, search leaves that
    document's old vectors out (they are of another model) rather than compare
    them with the new model's query vectors.
    """
    cls = embeddings.PROVIDERS.get(provider)
    dimension = (cls.fixed_dimension if cls else None) or kb.embedding_dimension
    checked = checked_provider(provider, "", dimension, field="provider")
    with transaction.atomic():
        KnowledgeBase.objects.filter(pk=kb.pk).update(
            embedding_provider=provider,
            embedding_model=checked.model,
            embedding_dimension=dimension,
            hybrid=default_hybrid(provider) if hybrid is None else hybrid,
            version=F("version") + 1,
            updated_at=timezone.now(),
        )
        kb.refresh_from_db()
        return submit_update(kb, REBUILD, owner=owner)


def edit_knowledge_base(kb: KnowledgeBase, **changes) -> KnowledgeBase:
    """Change name, description, owner or hybrid; the embedding settings change
    only through change_provider (a rebuild)."""
    allowed = {"name", "description", "owner", "hybrid"}
    if set(changes) - allowed:
        raise InvalidInput(f"{sorted(set(changes) - allowed)[0]}: cannot be changed")
    if "name" in changes and not (changes["name"] or "").strip(BLANK):
        raise InvalidInput("name: must not be blank")
    ranking = "hybrid" in changes and changes["hybrid"] != kb.hybrid
    for field, value in changes.items():
        setattr(kb, field, value.strip(BLANK) if field == "name" else value)
    with transaction.atomic():
        kb.save(update_fields=[*changes, "updated_at"])
        if ranking:
            # Search caches per version, with or without the BM25 index.
            _bump_version(kb.pk)
    return kb


def provider_for(kb: KnowledgeBase) -> embeddings.Provider:
    return embeddings.get_provider(
        kb.embedding_provider,
        model=kb.embedding_model,
        dimension=kb.embedding_dimension,
    )


def vectorize_queue(kb_id: int) -> str:
    """The queue of a knowledge base's vectorize tasks.

    Vectorizing for a remote embedding endpoint spends its time waiting on the
    endpoint, so it goes to knowledge_remote, served by the threads-pool worker
    with the AI replies; local providers are CPU-bound and stay on prefork.
    """
    name = (
        KnowledgeBase.objects.filter(pk=kb_id)
        .values_list("embedding_provider", flat=True)
        .first()
    )
    provider = embeddings.PROVIDERS.get(name)
    if provider is not None and provider.remote:
        return REMOTE_QUEUE
    return ledger.route_queue(VECTORIZE)


CONTEXT_KNOWLEDGE_BASE = "Writing job context"


def ready_knowledge_bases(owner) -> list[KnowledgeBase]:
    """The owner's knowledge bases that have at least one ready document."""
    return list(
        KnowledgeBase.objects.filter(owner=owner, documents__status=Status.READY)
        .distinct()
        .order_by("id")
    )


def add_context_files(owner, files: dict[str, str]) -> list[Document]:
    """Texts sent with a request as {file name: text} (the old API's
    context_files), as documents of the owner's "Writing job context" knowledge
    base, created on first use. A file already there with the same title and text
    is reused. Not vectorized here: whoever searches them calls vectorize_now."""
    kb = KnowledgeBase.objects.filter(
        owner=owner, name=CONTEXT_KNOWLEDGE_BASE
    ).order_by("id").first() or create_knowledge_base(
        owner,
        name=CONTEXT_KNOWLEDGE_BASE,
        description="Texts sent inline with writing jobs (context_files).",
    )
    documents = []
    for name, raw in files.items():
        title, text = extract.text_of_named(name, raw)
        if not text.strip(BLANK):
            raise InvalidInput(f"context_files: {name!r} has no text")
        existing = Document.objects.filter(
            knowledge_base=kb, title=title[:300], content_hash=content_hash(text)
        ).first()
        documents.append(
            existing
            or add_document(
                kb, title=title[:300], content=text, source=name[:500], vectorize=False
            )
        )
    return documents


def vectorize_now(documents) -> None:
    """Vectorize in this process the documents that are not ready (a job about to
    search texts it was just given); idempotent, as the task is."""
    for document in documents:
        if document.status != Status.READY:
            vectorize_document(document.pk)


def add_document(
    kb: KnowledgeBase,
    *,
    title: str,
    content: str,
    source: str = "",
    vectorize: bool = True,
    owner=None,
) -> Document:
    """Store a document and, when vectorize, queue knowledge.vectorize_document
    (the task belongs to owner, by default the knowledge base's owner).

    The task is published after the caller's transaction commits (submit), so a
    rolled-back request leaves neither the document nor a task behind.
    """
    with transaction.atomic():
        document = Document.objects.create(
            knowledge_base=kb, title=title, content=content, source=source
        )
        if vectorize:
            submit_vectorize(document, owner=owner or kb.owner)
    return document


def update_document(
    document: Document,
    *,
    title: str | None = None,
    content: str | None = None,
    source: str | None = None,
    vectorize: bool = True,
    owner=None,
) -> Document:
    """Edit a document; a content change queues a re-vectorize when vectorize."""
    changed = []
    for field, value in (("title", title), ("content", content), ("source", source)):
        if value is not None and value != getattr(document, field):
            setattr(document, field, value)
            changed.append(field)
    if not changed:
        return document
    with transaction.atomic():
        document.save(update_fields=[*changed, "updated_at"])
        if vectorize and "content" in changed:
            kb = document.knowledge_base
            submit_vectorize(document, owner=owner or kb.owner)
    return document


def delete_knowledge_base(kb: KnowledgeBase) -> None:
    # Chunks and documents go with it (ON DELETE CASCADE through Django's
    # collector, which deletes chunks in bulk: nothing references them).
    kb.delete()


def delete_document(document: Document) -> None:
    with transaction.atomic():
        kb_id = document.knowledge_base_id
        had_vectors = document.chunks.exists()
        document.delete()
        if had_vectors:
            _bump_version(kb_id)


def submit_vectorize(
    document: Document, *, owner=None, idempotency_key: str | None = None
) -> TaskRecord:
    return ledger.submit(
        VECTORIZE,
        args=[document.pk],
        owner=owner,
        target=document,
        queue=vectorize_queue(document.knowledge_base_id),
        idempotency_key=idempotency_key,
    )


def submit_update(
    kb: KnowledgeBase, mode: str, *, owner=None, idempotency_key: str | None = None
) -> TaskRecord:
    if mode not in MODES:
        raise InvalidInput(f"mode: must be one of {', '.join(MODES)}")
    return ledger.submit(
        UPDATE,
        args=[kb.pk, mode],
        owner=owner,
        target=kb,
        idempotency_key=idempotency_key,
    )


def submit_delete_vectors(
    *,
    kb: KnowledgeBase | None = None,
    document: Document | None = None,
    owner=None,
    idempotency_key: str | None = None,
) -> TaskRecord:
    if (kb is None) == (document is None):
        raise InvalidInput("give a knowledge base or a document")
    kwargs = {"kb_id": kb.pk} if kb else {"document_id": document.pk}
    return ledger.submit(
        DELETE_VECTORS,
        kwargs=kwargs,
        owner=owner,
        target=kb or document,
        idempotency_key=idempotency_key,
    )


def ensure_owned(
    *,
    kb_id: int | None = None,
    document_id: int | None = None,
    update: str | None = None,
) -> None:
    """Raise ownership.NotOwned unless the knowledge base, the document (through
    its knowledge base) and the update (a knowledge-base update's Celery id, whose
    record a member reports to) belong to the running task's owner. Every
    knowledge task calls this first, before it changes anything."""
    if kb_id is not None:
        owner = KnowledgeBase.objects.filter(pk=kb_id).values_list("owner_id")
        ownership.ensure_owned(*_ids(owner), what=f"knowledge base {kb_id}")
    if document_id is not None:
        owner = Document.objects.filter(pk=document_id).values_list(
            "knowledge_base__owner_id"
        )
        ownership.ensure_owned(*_ids(owner), what=f"document {document_id}")
    if update:
        ownership.ensure_same_owner(update, what=f"update {update}")


def _ids(rows) -> list:
    return [row[0] for row in rows]


def _bump_version(kb_id: int) -> None:
    # Search caches a matrix per version; every change of vectors must bump it,
    # in the transaction that changes them.
    KnowledgeBase.objects.filter(pk=kb_id).update(version=F("version") + 1)


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
            _bump_version(document.knowledge_base_id)
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
        *_ids(owner), what=f"knowledge base {kb_id}", celery_id=update_celery_id
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
                _bump_version(kb)
        deleted += count
        done += len(batch)
        report_progress(done, total, f"deleted vectors of {done} of {total} documents")
    return {"documents": total, "chunks_deleted": deleted}
