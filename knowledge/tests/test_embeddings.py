"""Embedding providers: hashing (pure), openai against a real local HTTP server,
sentence-transformers' missing-package path."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from claw.tests.conftest import ScriptedServer
from knowledge import embeddings, services, vectorizing
from knowledge.embeddings import EmbeddingRejected, EmbeddingUnavailable, embed
from knowledge.models import Document


def hashing(texts, dimension=384):
    return embed(texts, provider="hashing", dimension=dimension)


def cosine(a, b) -> float:
    return float(a @ b)


# --- hashing -------------------------------------------------------------------


def test_hashing_vectors_are_unit_float32_of_the_dimension():
    vectors = hashing(["hello world", "你好世界", ""], dimension=64)

    assert vectors.dtype == np.float32 and vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors[:2], axis=1), 1, atol=1e-6)
    assert not vectors[2].any()  # empty text: a zero vector, similar to nothing


def test_hashing_is_the_same_in_another_process():
    # Python's hash() is salted per process; the provider must not depend on it.
    script = textwrap.dedent(
        """
        import os, sys, django
        os.environ["DJANGO_SETTINGS_MODULE"] = "claw.test_settings"
        django.setup()
        from knowledge.embeddings import embed
        v = embed(["Vector search 向量检索"], provider="hashing", dimension=32)
        sys.stdout.write(v.tobytes().hex())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONHASHSEED": "12345", **_env()},
    )
    assert out.returncode == 0, out.stderr
    here = hashing(["Vector search 向量检索"], dimension=32)
    assert out.stdout.strip() == here.tobytes().hex()


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}


def test_hashing_finds_related_text_in_chinese_and_english():
    docs = hashing(
        [
            "机器学习让计算机从数据中学习。",
            "今天的天气很好，适合去公园散步。",
            "The rocket engine burns kerosene.",
            "Bananas are a yellow fruit.",
        ]
    )
    zh_query, en_query = hashing(["计算机学习数据", "kerosene rockets"])

    assert cosine(zh_query, docs[0]) > cosine(zh_query, docs[1])
    assert cosine(en_query, docs[2]) > cosine(en_query, docs[3])


def test_hashing_checks_the_dimension_and_the_provider_name():
    with pytest.raises(EmbeddingRejected):
        embed(["x"], provider="hashing", dimension=0)
    with pytest.raises(EmbeddingRejected):
        embed(["x"], provider="word2vec", dimension=8)


# --- sentence-transformers ------------------------------------------------------


def test_sentence_transformers_without_the_package_is_a_clear_permanent_error(
    monkeypatch,
):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # ImportError

    with pytest.raises(EmbeddingRejected) as caught:
        embed(["x"], provider="sentence-transformers", dimension=384)

    assert "pip install sentence-transformers" in str(caught.value)
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # never a download


# --- openai ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    # One server for the module: each shutdown waits out a 0.5 s poll.
    with ScriptedServer() as server:
        yield server


@pytest.fixture
def endpoint(server, settings):
    server.script.clear()
    server.requests.clear()
    settings.EMBEDDING_BASE_URL = server.url  # "/v1" is appended
    settings.EMBEDDING_API_KEY = "sk-test"
    settings.EMBEDDING_TIMEOUT = 2
    return server


def openai(texts, dimension=3, model="emb-model"):
    return embed(texts, provider="openai", model=model, dimension=dimension)


def answer(*vectors):
    # Deliberately out of order: the client must sort by index.
    data = [{"index": i, "embedding": v} for i, v in enumerate(vectors)]
    return {"status": 200, "json": {"data": list(reversed(data)), "model": "m"}}


def test_openai_posts_the_inputs_and_returns_unit_vectors_in_input_order(endpoint):
    endpoint.script.append(answer([3, 4, 0], [0, 0, 2]))

    vectors = openai(["first", "second"])

    assert np.allclose(vectors, [[0.6, 0.8, 0], [0, 0, 1]])
    request = endpoint.requests[0]
    assert request["path"] == "/v1/embeddings"
    assert request["body"] == {"model": "emb-model", "input": ["first", "second"]}
    assert request["headers"]["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_openai_client_errors_are_permanent_with_the_providers_message(
    endpoint, status
):
    endpoint.script.append(
        {"status": status, "json": {"error": {"message": "bad model name"}}}
    )

    with pytest.raises(EmbeddingRejected) as caught:
        openai(["x"])

    assert str(caught.value) == f"Embedding endpoint answered {status}: bad model name"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_openai_throttling_and_server_errors_are_transient(endpoint, status):
    endpoint.script.append({"status": status, "json": {"error": "busy"}})

    with pytest.raises(EmbeddingUnavailable, match=str(status)):
        openai(["x"])


def test_openai_timeout_is_transient(endpoint, settings):
    settings.EMBEDDING_TIMEOUT = 0.3
    endpoint.script.append({**answer([1, 0, 0]), "sleep": 1.5})

    with pytest.raises(EmbeddingUnavailable, match="timed out"):
        openai(["x"])


def test_openai_unreachable_is_transient(settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    settings.EMBEDDING_BASE_URL = f"http://127.0.0.1:{port}/v1"

    with pytest.raises(EmbeddingUnavailable, match="unreachable"):
        openai(["x"])


def test_openai_malformed_or_short_answers_are_transient(endpoint):
    endpoint.script.append({"status": 200, "json": {"unexpected": True}})
    endpoint.script.append(answer([1, 0, 0]))

    with pytest.raises(EmbeddingUnavailable, match="Malformed"):
        openai(["x"])
    with pytest.raises(EmbeddingUnavailable, match="1 vectors for 2 inputs"):
        openai(["x", "y"])


def test_openai_vectors_of_another_dimension_are_rejected(endpoint):
    endpoint.script.append(answer([1, 0, 0, 0]))

    with pytest.raises(EmbeddingRejected, match="length 4"):
        openai(["x"], dimension=3)


def test_a_bad_base_url_scheme_is_permanent(settings):
    settings.EMBEDDING_BASE_URL = "ftp://example.invalid"

    with pytest.raises(EmbeddingRejected, match="EMBEDDING_BASE_URL"):
        openai(["x"])


@pytest.mark.django_db
def test_a_document_whose_endpoint_answers_400_ends_failed_with_its_message(
    endpoint, alice
):
    kb = services.create_knowledge_base(
        alice,
        name="Remote",
        embedding_provider="openai",
        embedding_model="no-such-model",
        embedding_dimension=3,
    )
    document = services.add_document(kb, title="T", content="Text.", vectorize=False)
    endpoint.script.append(
        {"status": 400, "json": {"error": {"message": "model not found"}}}
    )

    with pytest.raises(services.VectorizeFailed):
        vectorizing.vectorize_document(document.pk)

    document.refresh_from_db()
    assert document.status == Document.Status.FAILED
    assert document.error == "Embedding endpoint answered 400: model not found"
    assert endpoint.requests[0]["body"]["model"] == "no-such-model"


def test_the_provider_registry_names_every_knowledge_base_choice():
    from knowledge.models import KnowledgeBase

    assert set(embeddings.PROVIDERS) == set(KnowledgeBase.Provider.values)
