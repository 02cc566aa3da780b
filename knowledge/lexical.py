"""Lexical ranking (BM25) over chunk texts, and reciprocal-rank fusion.

Hybrid search (knowledge.search) ranks a knowledge base's chunks twice: by the
cosine of their semantic vectors and by BM25 over their words, then fuses the two
rankings by reciprocal rank (RRF). BM25 catches what a small multilingual model
blurs: exact terms such as error codes, model numbers, names.

Terms are those the hashing provider uses, without its character trigrams: words
(NFKC, lower case) in space-separated scripts, and characters plus character
bigrams in CJK text, which has no spaces between words.
"""

from __future__ import annotations

import math
import unicodedata

import numpy as np

from knowledge.embeddings import _TOKEN

K1, B = 1.2, 0.75  # the usual BM25 constants
RRF_K = 60  # the constant of Cormack et al.; damps the weight of the very top ranks
# Each ranking contributes its best FUSE_DEPTH rows (at least k) to the fusion. A
# chunk enters the lexical ranking only with a normalised BM25 score of at least
# LEXICAL_FLOOR (it matches about 30% of the query's idf): plain RRF lets any
# chunk sharing a common word with the query outrank a paraphrase that shares
# none, which cost 0.22 of recall@5 in bench_retrieval (README, "Hybrid ranking").
FUSE_DEPTH = 50
LEXICAL_FLOOR = 0.3


def terms(text: str) -> list[str]:
    out: list[str] = []
    normal = unicodedata.normalize("NFKC", text).lower()
    for match in _TOKEN.finditer(normal):
        token = match.group()
        if match.lastgroup == "cjk":
            out.extend(token)
            out.extend(token[i : i + 2] for i in range(len(token) - 1))
        else:
            out.append(token)
    return out


class BM25Index:
    """Postings of every term over rows 0..n-1 (one row per chunk), as flat numpy
    arrays sorted by term, so a query costs one slice per query term."""

    def __init__(self, texts: list[str]):
        vocabulary: dict[str, int] = {}
        term_ids: list[int] = []
        rows: list[int] = []
        counts: list[int] = []
        lengths = np.zeros(len(texts), dtype=np.float32)
        for row, text in enumerate(texts):
            found: dict[int, int] = {}
            words = terms(text)
            lengths[row] = len(words)
            for word in words:
                tid = vocabulary.setdefault(word, len(vocabulary))
                found[tid] = found.get(tid, 0) + 1
            term_ids.extend(found)
            rows.extend([row] * len(found))
            counts.extend(found.values())
        order = np.argsort(np.asarray(term_ids, dtype=np.int64), kind="stable")
        self.vocabulary = vocabulary
        # 6 bytes a posting: about 130 MB for 100k chunks of 800 characters
        self.rows = np.asarray(rows, dtype=np.int32)[order]
        self.counts = np.minimum(np.asarray(counts), 65535).astype(np.uint16)[order]
        sorted_ids = np.asarray(term_ids, dtype=np.int64)[order]
        self.starts = np.searchsorted(sorted_ids, np.arange(len(vocabulary) + 1))
        self.size = len(texts)
        average = float(lengths.mean()) if len(texts) else 1.0
        # The length part of BM25's denominator, per row, computed once.
        self.norms = K1 * (1 - B + B * lengths / max(average, 1e-9))

    @property
    def nbytes(self) -> int:
        arrays = (self.rows, self.counts, self.starts, self.norms)
        # the vocabulary: about 100 bytes a term in CPython
        return sum(a.nbytes for a in arrays) + 100 * len(self.vocabulary)

    def idf(self, df: int) -> float:
        return math.log(1 + (self.size - df + 0.5) / (df + 0.5))

    def scores(self, query: str, *, normalised: bool = False) -> np.ndarray:
        """BM25 score of every row for query (0 where no query term occurs).

        normalised: divided by the sum of the query terms' idf (terms found
        nowhere count with df 0), the score of an average-length row holding
        each query term once. About the share of the query's information a row
        matches, so one floor suits short and long queries alike.
        """
        out = np.zeros(self.size, dtype=np.float32)
        total_idf = 0.0
        for word in set(terms(query)):
            tid = self.vocabulary.get(word)
            if tid is None:
                total_idf += self.idf(0)
                continue
            lo, hi = self.starts[tid], self.starts[tid + 1]
            idf = self.idf(hi - lo)
            total_idf += idf
            rows = self.rows[lo:hi]
            tf = self.counts[lo:hi].astype(np.float32)
            out[rows] += idf * tf * (K1 + 1) / (tf + self.norms[rows])
        if normalised and total_idf > 0:
            out /= total_idf
        return out


def ranking(
    scores: np.ndarray, depth: int, *, floor: float = -np.inf, strict: bool = True
) -> np.ndarray:
    """Rows of the depth best scores above floor (or at it, not strict), best
    first (ties: lower row)."""
    candidates = np.flatnonzero(scores > floor if strict else scores >= floor)
    if len(candidates) > depth:
        part = np.argpartition(-scores[candidates], depth - 1)[:depth]
        candidates = candidates[part]
    return candidates[np.lexsort((candidates, -scores[candidates]))]


def rrf(rankings: list[np.ndarray], size: int, *, k: int = RRF_K) -> np.ndarray:
    """Reciprocal-rank fusion: each row scores sum(1 / (k + rank)) over the
    rankings it appears in (rank 1 = best); rows in none score 0."""
    fused = np.zeros(size, dtype=np.float64)
    for rows in rankings:
        fused[rows] += 1.0 / (k + np.arange(1, len(rows) + 1))
    return fused


def fuse(
    semantic: np.ndarray,
    lexical_scores: np.ndarray,
    k: int,
    *,
    lexical_floor: float = LEXICAL_FLOOR,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the k best by reciprocal-rank fusion of two score vectors, best
    first, and the fused score of every row. The semantic ranking is exact
    (every row scored; -inf rows are out); a row enters the lexical one only at
    or above lexical_floor (lexical_scores normalised, see BM25Index.scores).
    Ties: semantic order."""
    depth = max(k, FUSE_DEPTH)
    by_meaning = ranking(semantic, depth)
    by_words = ranking(
        np.where(np.isfinite(semantic), lexical_scores, 0.0), depth,
        floor=max(lexical_floor, np.finfo(np.float32).tiny), strict=False,
    )  # fmt: skip
    fused = rrf([by_meaning, by_words], len(semantic))
    candidates = np.union1d(by_meaning, by_words)
    semantic_rank = np.full(len(semantic), len(semantic), dtype=np.int64)
    semantic_rank[by_meaning] = np.arange(len(by_meaning))
    order = np.lexsort((semantic_rank[candidates], -fused[candidates]))
    return candidates[order][:k], fused
