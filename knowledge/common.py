"""What editing and vectorizing share: the knowledge tasks' names and modes, the
errors, a knowledge base's provider, ownership checks and the search-cache version.
"""

from __future__ import annotations

from django.db.models import F

from knowledge import embeddings
from knowledge.models import Document, KnowledgeBase
from tasks_app import ownership

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


def provider_for(kb: KnowledgeBase) -> embeddings.Provider:
    return embeddings.get_provider(
        kb.embedding_provider,
        model=kb.embedding_model,
        dimension=kb.embedding_dimension,
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
        ownership.ensure_owned(*ids_of(owner), what=f"knowledge base {kb_id}")
    if document_id is not None:
        owner = Document.objects.filter(pk=document_id).values_list(
            "knowledge_base__owner_id"
        )
        ownership.ensure_owned(*ids_of(owner), what=f"document {document_id}")
    if update:
        ownership.ensure_same_owner(update, what=f"update {update}")


def ids_of(rows) -> list:
    return [row[0] for row in rows]


def bump_version(kb_id: int) -> None:
    # Search caches a matrix per version; every change of vectors must bump it,
    # in the transaction that changes them.
    KnowledgeBase.objects.filter(pk=kb_id).update(version=F("version") + 1)
