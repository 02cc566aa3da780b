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
# Each ranking contributes its best FUSE_DEPTH rows (at least k) to the fusion; a
# chunk enters the lexical ranking only with a BM25 score above LEXICAL_FLOOR
# (0: it shares at least one term with the query).
FUSE_DEPTH = 50
LEXICAL_FLOOR = 0.0


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
        self.rows = np.asarray(rows, dtype=np.int64)[order]
        self.counts = np.asarray(counts, dtype=np.float32)[order]
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

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every row for query (0 where no query term occurs)."""
        out = np.zeros(self.size, dtype=np.float32)
        for word in set(terms(query)):
            tid = self.vocabulary.get(word)
            if tid is None:
                continue
            lo, hi = self.starts[tid], self.starts[tid + 1]
            df = hi - lo
            idf = math.log(1 + (self.size - df + 0.5) / (df + 0.5))
            rows, tf = self.rows[lo:hi], self.counts[lo:hi]
            out[rows] += idf * tf * (K1 + 1) / (tf + self.norms[rows])
        return out


def ranking(scores: np.ndarray, depth: int, *, floor: float = -np.inf) -> np.ndarray:
    """Rows of the depth best scores above floor, best first (ties: lower row)."""
    candidates = np.flatnonzero(scores > floor)
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
    (every row scored; -inf rows are out); a row enters the lexical one only
    above lexical_floor. Ties: semantic order."""
    depth = max(k, FUSE_DEPTH)
    by_meaning = ranking(semantic, depth)
    by_words = ranking(
        np.where(np.isfinite(semantic), lexical_scores, -np.inf), depth,
        floor=lexical_floor,
    )  # fmt: skip
    fused = rrf([by_meaning, by_words], len(semantic))
    candidates = np.union1d(by_meaning, by_words)
    semantic_rank = np.full(len(semantic), len(semantic), dtype=np.int64)
    semantic_rank[by_meaning] = np.arange(len(by_meaning))
    order = np.lexsort((semantic_rank[candidates], -fused[candidates]))
    return candidates[order][:k], fused
