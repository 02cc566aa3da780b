"""Editing knowledge: the only writers of knowledge bases and documents, and what
submits their tasks. Admin, API and other domains call these (other domains call
this module only: it re-exports what they use). Chunks are written by the worker
side, knowledge/vectorizing.py (vectorize, update, delete vectors); what both share
is knowledge/common.py.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from knowledge import embeddings, extract

# What other domains (conversations, writing) use of knowledge: they import this
# module only (tests/test_architecture.py), so these names are its public face.
from knowledge.chunking import sentence_spans as sentence_spans
from knowledge.common import (  # noqa: F401 - the public face of knowledge
    DELETE_VECTORS,
    FULL,
    HYBRID_BY_DEFAULT,
    INCREMENTAL,
    MODES,
    REBUILD,
    REMOTE_QUEUE,
    UPDATE,
    VECTORIZE,
    InvalidInput,
    Status,
    UpdateFailed,
    VectorizeFailed,
    bump_version,
    ensure_owned,
    provider_for,
)
from knowledge.embeddings import EmbeddingError as EmbeddingError
from knowledge.embeddings import EmbeddingUnavailable as EmbeddingUnavailable
from knowledge.models import Chunk as Chunk
from knowledge.models import Document as Document
from knowledge.models import KnowledgeBase, content_hash
from knowledge.search import SearchHit as SearchHit
from knowledge.search import search_many as search_many
from knowledge.vectorizing import vectorize_document
from tasks_app import services as ledger
from tasks_app.api.fields import BLANK
from tasks_app.models import TaskRecord

logger = logging.getLogger(__name__)


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
    fixed = getattr(embeddings.PROVIDERS.get(embedding_provider), "fixed_dimension", 0)
    # A provider whose model has one size (e5-small: 384) uses it whatever was
    # asked, as one-model providers ignore a model name; the record says which.
    embedding_dimension = fixed or embedding_dimension
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
            bump_version(kb.pk)
    return kb


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


BULK_LIMIT = 500  # documents in one add_documents call (POST /documents/bulk/)


def add_documents(
    kb: KnowledgeBase,
    items: list[dict],
    *,
    owner,
    idempotency_keys: list[str] | None = None,
) -> list[tuple[Document, TaskRecord]]:
    """Store documents ({"title", "content", "source"} each, checked by the
    caller) and queue a knowledge.vectorize_document for each, owned by owner
    (idempotency_keys[i] on the i-th task): one INSERT of the documents and one
    submit_many, in one transaction, so a refused or rolled-back request leaves
    neither documents nor tasks, and the tasks are published together after
    commit."""
    if len(items) > BULK_LIMIT:
        raise InvalidInput(f"documents: at most {BULK_LIMIT} in one request")
    keys = idempotency_keys or [None] * len(items)
    queue = vectorize_queue(kb.pk)
    with transaction.atomic():
        documents = Document.objects.bulk_create(
            [
                Document(
                    knowledge_base=kb,
                    title=item["title"],
                    content=item["content"],
                    source=item.get("source", ""),
                    content_hash=content_hash(item["content"]),
                )
                for item in items
            ]
        )
        records = ledger.submit_many(
            ledger.Submission(
                VECTORIZE,
                args=[document.pk],
                owner=owner,
                target=document,
                queue=queue,
                idempotency_key=key,
            )
            for document, key in zip(documents, keys, strict=True)
        )
    return list(zip(documents, records, strict=True))


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
            bump_version(kb_id)


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
