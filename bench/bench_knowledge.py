"""Knowledge: chunks embedded per second (hashing provider) and search latency.

A child process (claw.settings on a fresh bench database) measures:
1. embed: the hashing provider alone over 800-character chunks (half English,
   half Chinese), in EMBEDDING_BATCH_SIZE batches;
2. vectorize: vectorizing.vectorize_document end to end (chunk, embed, store in one
   transaction), synchronously, no worker, nothing reused;
3. search: search() top-10 at 10k and 100k chunks of dimension 384. Chunks are
   COPYed in with random unit vectors (latency does not depend on their values);
   the first search loads the matrix (reported), then p50/p95 over distinct
   queries, each embedded with the hashing provider as a real query is.
"""

from __future__ import annotations

import json

from bench.bench_throughput import claw_env
from bench.common import row, run_py

DB = "claw_bench_knowledge"

CHILD = r"""
import json, statistics, sys, time
import django
django.setup()
import numpy as np
from django.contrib.auth import get_user_model
from django.db import connection
from knowledge import common, embeddings, search, services, vectorizing
from knowledge.models import Chunk, Document

quick = sys.argv[1] == "quick"
rng = np.random.default_rng(7)
EN = ("vector search ranks passages by cosine similarity between embeddings of "
      "questions and chunks of documents stored in the knowledge base ").split()
ZH = "向量检索根据问题和文档片段之间的余弦相似度对段落进行排序知识库保存文档"

def text(i, length=800):
    if i % 2:
        words = rng.choice(EN, size=length // 6)
        return (" ".join(words) + f" item {i}.")[:length]
    chars = rng.choice(list(ZH), size=length)
    return "".join(chars) + f"第{i}条。"

out = {}
user = get_user_model().objects.create_user("bench")

# 1. the provider alone
n = 2000 if quick else 10000
texts = [text(i) for i in range(n)]
provider = embeddings.get_provider("hashing", dimension=384)
batch = 64
t = time.perf_counter()
for start in range(0, n, batch):
    embeddings.embed_with(provider, texts[start:start + batch])
out["embed"] = {"n": n, "elapsed": time.perf_counter() - t}

# 2. vectorize_document end to end (fresh texts: nothing to reuse)
kb = services.create_knowledge_base(user, name="vectorize")
docs = 40 if quick else 200
ids = [services.add_document(kb, title=f"d{i}", content=" ".join(text(10**6 + i * 10 + j)
       for j in range(5)), vectorize=False).pk for i in range(docs)]
t = time.perf_counter()
chunks = sum(vectorizing.vectorize_document(pk)["embedded"] for pk in ids)
out["vectorize"] = {"chunks": chunks, "docs": docs, "elapsed": time.perf_counter() - t}

# 3. search latency
def fill(kb, total, per_doc=100):
    have = Chunk.objects.filter(knowledge_base=kb).count()
    with connection.cursor() as cursor:
        while have < total:
            doc = Document.objects.create(knowledge_base=kb, title=f"doc {have}",
                                          content="synthetic", status="ready")
            vectors = rng.standard_normal((per_doc, 384)).astype("<f4")
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            with cursor.cursor.copy(
                "COPY knowledge_chunk (document_id, knowledge_base_id, position, "
                "text, start, \"end\", content_hash, embedding, model_name, "
                "dimension) FROM STDIN"
            ) as copy:
                for p in range(per_doc):
                    copy.write_row((doc.pk, kb.pk, p, f"chunk {have + p} text", 0, 10,
                                    f"{have + p:064d}", vectors[p].tobytes(),
                                    "hashing:v1", 384))
            have += per_doc
    common.bump_version(kb.pk)

kb = services.create_knowledge_base(user, name="search")
queries = [f"question {i} about " + text(i, 120) for i in range(300)]
for size in ([10_000] if quick else [10_000, 100_000]):
    t = time.perf_counter()
    fill(kb, size)
    fill_s = time.perf_counter() - t
    kb.refresh_from_db()
    t = time.perf_counter()
    search.search(kb, "cold start", k=10)
    cold = time.perf_counter() - t
    times = []
    for q in queries[: 100 if quick else 300]:
        t = time.perf_counter()
        hits = search.search(kb, q, k=10)
        times.append((time.perf_counter() - t) * 1000)
        assert len(hits) == 10
    times.sort()
    matrix = search.cached_matrix(kb)
    out[f"search {size}"] = {
        "p50": statistics.median(times),
        "p95": times[int(len(times) * 0.95) - 1],
        "cold": cold, "fill": fill_s, "mb": matrix.nbytes / 2**20,
        "n": len(times),
    }
print(json.dumps(out))
"""


def run(quick: bool = False) -> list[dict]:
    env = claw_env(DB)
    env["KNOWLEDGE_SEARCH_CACHE_MB"] = "512"
    raw = run_py(["-c", CHILD, "quick" if quick else "full"], env, timeout=300)
    out = json.loads(raw.strip().splitlines()[-1])
    s = "knowledge"
    embed, vec = out["embed"], out["vectorize"]
    rows = [
        row(s, "hashing embed chunks/s (800 chars, batch 64)",
            round(embed["n"] / embed["elapsed"], 1), "chunks/s", "",
            f"{embed['n']} chunks in {embed['elapsed']:.1f} s, one process"),
        row(s, "vectorize_document chunks/s (chunk + embed + store)",
            round(vec["chunks"] / vec["elapsed"], 1), "chunks/s", "",
            f"{vec['docs']} documents, {vec['chunks']} chunks in "
            f"{vec['elapsed']:.1f} s, synchronous"),
    ]  # fmt: skip
    for key, result in out.items():
        if not key.startswith("search "):
            continue
        size = int(key.split()[1])
        target = "< 20" if size == 100_000 else ""
        met = "met" if result["p50"] < 20 else "MISSED"
        rows += [
            row(s, f"search top-10 p50 at {size:,} chunks (dim 384)",
                round(result["p50"], 2), "ms", target,
                (met + "; " if target else "") + f"{result['n']} queries, "
                f"query embedding and hit rows included"),
            row(s, f"search top-10 p95 at {size:,} chunks", round(result["p95"], 2),
                "ms", "", ""),
            row(s, f"first search at {size:,} chunks (matrix load)",
                round(result["cold"], 2), "s", "",
                f"matrix {result['mb']:.0f} MB in memory; fill {result['fill']:.1f} s"),
        ]  # fmt: skip
    return rows
