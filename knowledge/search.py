"""Exact cosine top-k over a knowledge base's chunk vectors, in numpy; for a
hybrid knowledge base, fused by reciprocal rank with BM25 over the chunk texts.

Each process keeps the vector matrices of recently searched knowledge bases in
memory (up to KNOWLEDGE_SEARCH_CACHE_MB), keyed by the knowledge base's version: every change of vectors bumps the
version in the same transaction, so a cached matrix is never served stale.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from knowledge import embeddings, lexical
from knowledge.models import Chunk, KnowledgeBase

MAX_K = 100
FILTERS = {"document_ids"}


@dataclass(frozen=True)
class SearchHit:
    chunk_id: int
    document_id: int
    document_title: str
    position: int
    text: str
    score: float


@dataclass(frozen=True)
class VectorMatrix:
    version: int
    chunk_ids: np.ndarray  # int64, one per row
    document_ids: np.ndarray  # int64, one per row
    vectors: np.ndarray  # float32 (rows, dimension), L2-normalised
    lexical: lexical.BM25Index | None = None  # hybrid knowledge bases only

    @property
    def nbytes(self) -> int:
        arrays = self.chunk_ids.nbytes + self.document_ids.nbytes + self.vectors.nbytes
        return arrays + (self.lexical.nbytes if self.lexical else 0)


_cache: OrderedDict[int, VectorMatrix] = OrderedDict()
_cache_lock = threading.Lock()


def load_matrix(
    kb_id: int,
    dimension: int,
    version: int,
    *,
    model_name: str | None = None,
    with_text: bool = False,
) -> VectorMatrix:
    """Every embedded chunk of the knowledge base as one matrix.

    One scan of the chunk_kb_id index (knowledge_base, id); only the id, the
    document id and the vector bytes are read (and the text, with_text, for the
    BM25 index of a hybrid knowledge base). Chunks of another dimension or model
    (left from before `reindex_knowledge --provider` rebuilt the knowledge base)
    are left out: their vectors cannot be compared with the query's.
    """
    rows = Chunk.objects.filter(
        knowledge_base_id=kb_id, dimension=dimension, embedding__isnull=False
    )
    if model_name is not None:
        rows = rows.filter(model_name=model_name)
    fields = ("id", "document_id", "embedding", *(("text",) if with_text else ()))
    chunk_ids, document_ids, blobs, texts = [], [], [], []
    for values in rows.order_by("id").values_list(*fields).iterator(chunk_size=5000):
        chunk_ids.append(values[0])
        document_ids.append(values[1])
        blobs.append(bytes(values[2]))
        if with_text:
            texts.append(values[3])
    vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(-1, dimension)
    return VectorMatrix(
        version=version,
        chunk_ids=np.asarray(chunk_ids, dtype=np.int64),
        document_ids=np.asarray(document_ids, dtype=np.int64),
        vectors=vectors.astype(np.float32, copy=False),
        lexical=lexical.BM25Index(texts) if with_text else None,
    )


def _load(kb: KnowledgeBase, version: int) -> VectorMatrix:
    model_name = embeddings.get_provider(
        kb.embedding_provider,
        model=kb.embedding_model,
        dimension=kb.embedding_dimension,
    ).model_name
    return load_matrix(
        kb.pk,
        kb.embedding_dimension,
        version,
        model_name=model_name,
        with_text=kb.hybrid,
    )


def cached_matrix(kb: KnowledgeBase) -> VectorMatrix:
    # The version is read fresh: the caller's instance may be older than the
    # vectors, and another process may have changed them. It is bumped by every
    # change of vectors and of provider or hybrid setting, so it alone keys the
    # cache.
    version = KnowledgeBase.objects.filter(pk=kb.pk).values_list("version", flat=True)
    version = version.first()
    if version is None:
        return load_matrix(kb.pk, kb.embedding_dimension, -1)  # deleted: empty
    with _cache_lock:
        hit = _cache.get(kb.pk)
        if hit is not None and hit.version == version:
            _cache.move_to_end(kb.pk)
            return hit
    matrix = _load(kb, version)
    with _cache_lock:
        _cache[kb.pk] = matrix
        _cache.move_to_end(kb.pk)
        # Least recently searched out first, down to the budget; the matrix just
        # loaded stays even if it alone is larger.
        budget = settings.KNOWLEDGE_SEARCH_CACHE_MB * 2**20
        while len(_cache) > 1 and sum(m.nbytes for m in _cache.values()) > budget:
            _cache.popitem(last=False)
    return matrix


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _row_mask(matrix: VectorMatrix, filters: dict | None) -> np.ndarray | None:
    if not filters:
        return None
    unknown = set(filters) - FILTERS
    if unknown:
        raise ValueError(f"Unknown search filter(s) {sorted(unknown)}; use {FILTERS}")
    wanted = [int(i) for i in filters.get("document_ids") or [] if 0 < int(i) < 2**63]
    ids = np.asarray(wanted, dtype=np.int64)
    return np.isin(matrix.document_ids, ids)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first (ties: lower index first)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.intp)
    if k < len(scores):
        candidates = np.argpartition(-scores, k - 1)[:k]
    else:
        candidates = np.arange(len(scores))
    return candidates[np.lexsort((candidates, -scores[candidates]))]


def search(
    kb: KnowledgeBase, query: str, *, k: int = 5, filters: dict | None = None
) -> list[SearchHit]:
    """The k chunks most similar to query (cosine), best first; for a hybrid
    knowledge base, the k best by reciprocal-rank fusion of cosine and BM25, each
    hit's score then being its fused score (sum of 1 / (60 + rank)).

    filters: {"document_ids": [...]} restricts the search to those documents. An
    empty knowledge base or a blank query returns []. Embedding the query may
    raise EmbeddingUnavailable / EmbeddingRejected (the openai provider).
    """
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be 1 to {MAX_K}")
    matrix = cached_matrix(kb)
    mask = _row_mask(matrix, filters)
    if not query.strip() or len(matrix.chunk_ids) == 0:
        return []
    vector = embeddings.embed(
        [query],
        provider=kb.embedding_provider,
        model=kb.embedding_model,
        dimension=kb.embedding_dimension,
        query=True,
    )[0]
    scores = matrix.vectors @ vector
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    if matrix.lexical is not None:
        rows, fused = lexical.fuse(
            scores, matrix.lexical.scores(query, normalised=True), k
        )
        return _hits(matrix, fused, [int(i) for i in rows])
    best = [i for i in top_k(scores, k) if np.isfinite(scores[i])]
    return _hits(matrix, scores, best)


def _hits(matrix: VectorMatrix, scores: np.ndarray, rows: list[int]) -> list[SearchHit]:
    ids = [int(matrix.chunk_ids[i]) for i in rows]
    chunks = Chunk.objects.filter(pk__in=ids).select_related("document")
    by_id = {
        chunk.pk: chunk
        for chunk in chunks.only(
            "id", "position", "text", "document", "document__title"
        )
    }
    hits = []
    for row, chunk_id in zip(rows, ids, strict=True):
        chunk = by_id.get(chunk_id)
        if chunk is None:
            continue  # deleted since the matrix was loaded (its version is gone)
        hits.append(
            SearchHit(
                chunk_id=chunk_id,
                document_id=chunk.document_id,
                document_title=chunk.document.title,
                position=chunk.position,
                text=chunk.text,
                score=float(scores[row]),
            )
        )
    return hits


def search_many(
    scopes: list[tuple[KnowledgeBase, dict | None]], query: str, *, k: int = 5
) -> list[tuple[int, SearchHit]]:
    """The k best hits over several knowledge bases, each with its own filters,
    as (knowledge base id, hit) pairs, best first.

    Scores are cosines, comparable across knowledge bases of one embedding model;
    across models they are merged as they are. A hybrid knowledge base's scores
    are fused ranks, comparable with no cosine: when one takes part, hits are
    merged by their rank in their own knowledge base (then by score).
    """
    ranked = [
        (rank, kb.pk, hit)
        for kb, filters in scopes
        for rank, hit in enumerate(search(kb, query, k=k, filters=filters))
    ]
    if any(kb.hybrid for kb, _ in scopes):
        ranked.sort(key=lambda item: (item[0], -item[2].score))
    else:
        ranked.sort(key=lambda item: item[2].score, reverse=True)
    return [(kb_id, hit) for _, kb_id, hit in ranked[:k]]
