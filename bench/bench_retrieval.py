"""Retrieval quality and cost: hashing, BM25, e5-small and hybrid side by side.

Over bench/retrieval_data.py (520 passages, 162 questions in English and Chinese:
paraphrases, exact terms, and cross-lingual zh->en / en->zh, reported apart) it
ranks every passage for every question, exactly as knowledge.search does (cosine
top-k; BM25 and reciprocal-rank fusion from knowledge.lexical), and reports
recall@5 and MRR@10 per method and kind of question. Then the cost: vectorizing
800-character chunks (English and Chinese) per CPU-second, and query latency.

In-process, no database: the ranking code is the one search runs, the storage
around it is measured by bench_knowledge. Every passage is embedded once per
method and the vectors reused for all questions. --quick embeds a small subset.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from bench.common import row
from bench.retrieval_data import corpus
from knowledge import embeddings, lexical

S = "retrieval"
KINDS = ("all", "paraphrase", "exact term", "cross zh->en", "cross en->zh")
DEPTH = 10  # what MRR@10 reads; search fuses rankings of max(k, 50) rows


def _subset(passages: list, queries: list, per_part: int) -> tuple[list, list]:
    """A small corpus for --quick: per_part English anchors, Chinese anchors and
    generated passages, renumbered, with the questions they answer."""
    en = [p for p in passages if p["lang"] == "en"][:per_part]
    zh = [p for p in passages if p["lang"] == "zh"][:per_part]
    generated = passages[-per_part:]
    kept = {p["id"]: f"p{i}" for i, p in enumerate([*en, *zh, *generated])}
    small = [{**p, "id": kept[p["id"]]} for p in [*en, *zh, *generated]]
    asked = [
        {**q, "relevant": [kept[r] for r in q["relevant"]]}
        for q in queries
        if all(r in kept for r in q["relevant"])
    ]
    return small, asked


def _embed(provider, texts: list[str], *, query: bool) -> tuple[np.ndarray, float]:
    started = time.process_time()
    vectors = embeddings.embed_with(provider, texts, query=query)
    return vectors, time.process_time() - started


class Method:
    """One way of ranking the corpus: rank(i) -> the rows best first for query i."""

    def __init__(self, name, rank, latency_ms):
        self.name, self.rank, self.latency_ms = name, rank, latency_ms


def _dense(name, provider, passages, queries) -> tuple[Method, dict]:
    matrix, cpu = _embed(provider, [p["text"] for p in passages], query=False)
    times, scores = [], []
    for q in queries:
        started = time.perf_counter()
        vector = embeddings.embed_with(provider, [q["text"]], query=True)[0]
        s = matrix @ vector
        lexical.ranking(s, DEPTH)
        times.append((time.perf_counter() - started) * 1000)
        scores.append(s)
    cost = {"passages/cpu-s": len(passages) / cpu if cpu else float("inf")}
    method = Method(name, lambda i: lexical.ranking(scores[i], DEPTH), times)
    method.scores = scores
    return method, cost


def _bm25(passages, queries, *, normalised: bool) -> Method:
    index = lexical.BM25Index([p["text"] for p in passages])
    times, scores = [], []
    for q in queries:
        started = time.perf_counter()
        s = index.scores(q["text"], normalised=normalised)
        lexical.ranking(s, DEPTH, floor=0.0)
        times.append((time.perf_counter() - started) * 1000)
        scores.append(s)
    method = Method("bm25", lambda i: lexical.ranking(scores[i], DEPTH, floor=0), times)
    method.scores = scores
    return method


def _hybrid(name, semantic: Method, lexical_method: Method, floor: float) -> Method:
    """Ranked as knowledge.search ranks a hybrid knowledge base (lexical.fuse);
    latency: both scorings plus the fusion."""
    ranked, times = [], []
    for i, (a, b) in enumerate(
        zip(semantic.latency_ms, lexical_method.latency_ms, strict=True)
    ):
        started = time.perf_counter()
        rows, _ = lexical.fuse(
            semantic.scores[i], lexical_method.scores[i], DEPTH, lexical_floor=floor
        )
        ranked.append(rows)
        times.append(a + b + (time.perf_counter() - started) * 1000)
    return Method(name, lambda i: ranked[i], times)


def _quality(method: Method, queries: list) -> dict[str, tuple[float, float, int]]:
    """kind -> (recall@5, MRR@10, questions)."""
    per_kind: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
    for i, q in enumerate(queries):
        ranked = [int(r) for r in method.rank(i)][:DEPTH]
        relevant = {int(pid[1:]) for pid in q["relevant"]}
        recall = len(relevant & set(ranked[:5])) / len(relevant)
        first = next((n for n, r in enumerate(ranked, 1) if r in relevant), None)
        mrr = 1 / first if first else 0.0
        per_kind["all"].append((recall, mrr))
        per_kind[q["kind"]].append((recall, mrr))
    return {
        kind: (
            statistics.fmean(r for r, _ in values),
            statistics.fmean(m for _, m in values),
            len(values),
        )
        for kind, values in per_kind.items()
        if values
    }


def _throughput(provider, quick: bool) -> dict[tuple[str, int], float]:
    """(language, chunk size) -> chunks embedded per CPU-second."""
    en = (
        "Workers pick tasks from the broker, run them and store the result; a "
        "failed task is retried with backoff until its attempts run out. "
    )
    zh = "工作进程从消息队列取出任务执行并保存结果，失败的任务会按退避策略重试，直到用完重试次数。"
    out = {}
    for size in (800,) if quick else (800, 400, 200):
        for lang, text, n in (
            ("en", en, 4 if quick else 16),
            ("zh", zh, 2 if quick else 6),
        ):
            n = n * 800 // size  # about the same text per size
            chunks = [(f"{i} " + text * 40)[:size] for i in range(n)]
            _, cpu = _embed(provider, chunks, query=False)
            out[lang, size] = n / cpu if cpu else float("inf")
    return out  # fmt: skip


def run(quick: bool = False) -> list[dict]:
    passages, queries = corpus()
    hashing = embeddings.get_provider(embeddings.HASHING, dimension=384)
    e5 = embeddings.get_provider(embeddings.E5_SMALL, dimension=384)
    if quick:
        passages, queries = _subset(passages, queries, 8)
    # row i of every matrix is passage p<i>: the relevance marks index rows
    assert all(p["id"] == f"p{i}" for i, p in enumerate(passages))
    hashing_method, hashing_cost = _dense("hashing", hashing, passages, queries)
    e5_method, e5_cost = _dense("e5-small", e5, passages, queries)
    bm25 = _bm25(passages, queries, normalised=False)
    bm25_normalised = _bm25(passages, queries, normalised=True)
    floor = lexical.LEXICAL_FLOOR
    methods = [
        hashing_method,
        bm25,
        e5_method,
        _hybrid(f"hybrid e5 + bm25 (floor {floor})", e5_method, bm25_normalised, floor),
        _hybrid("hybrid e5 + bm25, plain RRF (no floor)", e5_method, bm25, 0.0),
        _hybrid(
            "hybrid e5 + hashing cosine, plain RRF", e5_method, hashing_method, -1.0
        ),
    ]
    rows = []
    sizes = f"{len(passages)} passages, {len(queries)} questions"
    for method in methods:
        quality = _quality(method, queries)
        for kind in KINDS:
            if kind not in quality:
                continue
            recall, mrr, n = quality[kind]
            rows.append(row(
                S, f"{method.name}: recall@5, {kind}", round(recall, 3), "", "",
                f"MRR@10 {mrr:.3f}; {n} questions" + (f"; {sizes}" if kind == "all" else ""),
            ))  # fmt: skip
        rows.append(row(
            S, f"{method.name}: query latency p50", round(statistics.median(method.latency_ms), 2),
            "ms", "", f"embed the question + score {len(passages)} passages, one thread",
        ))  # fmt: skip
    for name, provider, cost in (
        ("hashing", hashing, hashing_cost),
        ("e5-small", e5, e5_cost),
    ):
        rates = _throughput(provider, quick)
        for (lang, size), rate in rates.items():
            target = ">= 20 for e5-small to be the default" if size == 800 else ""
            rows.append(row(
                S, f"{name}: vectorize {size}-char {lang} chunks per CPU-s", round(rate, 2),
                "chunks/s", target if name == "e5-small" else "",
                f"{rate * size:,.0f} characters per CPU-s; process CPU time, one "
                "thread (CLAW_E5_THREADS=1); machine shared",
            ))  # fmt: skip
        rows.append(row(
            S, f"{name}: embed benchmark passages per CPU-s", round(cost["passages/cpu-s"], 1),
            "passages/s", "", f"{len(passages)} passages of about 60 characters",
        ))  # fmt: skip
    if not quick:
        rows += _search_at_scale(e5, passages, queries)
    return rows


def _search_at_scale(e5, passages, queries, size: int = 100_000) -> list[dict]:
    """What a hybrid e5-small search costs at 100k chunks, in-process: embed the
    question, cosine over 100k random unit vectors (latency does not depend on
    their values), BM25 over 100k 800-character texts assembled from the corpus,
    fusion. The database part (matrix load, hit rows) is bench_knowledge's."""
    rng = np.random.default_rng(22)
    vectors = rng.standard_normal((size, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    picks = rng.integers(0, len(passages), size=(size, 14))
    texts = [" ".join(passages[j]["text"] for j in row)[:800] for row in picks]
    started = time.process_time()
    index = lexical.BM25Index(texts)
    build = time.process_time() - started
    del texts
    plain, hybrid = [], []
    for q in queries[:100]:
        started = time.perf_counter()
        vector = embeddings.embed_with(e5, [q["text"]], query=True)[0]
        scores = vectors @ vector
        lexical.ranking(scores, 10)
        middle = time.perf_counter()
        lexical.fuse(scores, index.scores(q["text"], normalised=True), 10)
        done = time.perf_counter()
        plain.append((middle - started) * 1000)
        hybrid.append((done - started) * 1000)
    note = "in-process, no database; 100 questions"
    return [
        row(S, f"e5-small search p50 at {size:,} chunks", round(statistics.median(plain), 1),
            "ms", "< 50", f"{note}; query embedding included"),
        row(S, f"hybrid e5 + bm25 search p50 at {size:,} chunks",
            round(statistics.median(hybrid), 1), "ms", "< 50",
            f"{note}; p95 {sorted(hybrid)[94]:.1f} ms"),
        row(S, f"BM25 index build at {size:,} chunks (first hybrid search)", round(build, 1),
            "CPU-s", "", f"{index.nbytes / 2**20:.0f} MB in memory besides the vectors"),
    ]  # fmt: skip
