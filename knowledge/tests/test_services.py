"""knowledge.services: documents, vectorizing (reuse, idempotency), versions."""

from __future__ import annotations

import time
from unittest.mock import patch

import numpy as np
import pytest

from knowledge import embeddings, services, vectorizing
from knowledge.chunking import chunk_text
from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.tests.conftest import add_ready
from tasks_app.models import TaskRecord

pytestmark = pytest.mark.django_db
Status = Document.Status

TEXT = " ".join(
    f"Sentence number {i} talks about topic {i % 7} in some detail." for i in range(60)
)


def version(kb) -> int:
    return KnowledgeBase.objects.values_list("version", flat=True).get(pk=kb.pk)


def test_the_hashing_provider_has_one_model_whatever_is_asked(alice):
    kb = services.create_knowledge_base(alice, name="x", embedding_model="large")

    assert kb.embedding_model == "v1"


def test_create_knowledge_base_fixes_the_provider_default_model(alice):
    kb = services.create_knowledge_base(alice, name=" Notes ")

    assert (kb.name, kb.embedding_provider, kb.embedding_model) == (
        "Notes",
        "hashing",
        "v1",
    )
    assert kb.embedding_dimension == 384


@pytest.mark.parametrize(
    "options, field",
    [
        ({"embedding_provider": "nope"}, "embedding_provider"),
        ({"embedding_dimension": 0}, "embedding_dimension"),
        ({"name": "  "}, "name"),
    ],
)
def test_create_knowledge_base_names_the_bad_field(alice, options, field):
    with pytest.raises(services.InvalidInput) as caught:
        services.create_knowledge_base(alice, **{"name": "x", **options})

    assert str(caught.value).startswith(field + ":")


def test_add_document_submits_vectorize_on_commit_for_the_kb_owner(
    kb, alice, django_capture_on_commit_callbacks
):
    with (
        patch("tasks_app.services.app.send_task") as send_task,
        django_capture_on_commit_callbacks(execute=True),
    ):
        document = services.add_document(kb, title="T", content="Some text.")

    record = TaskRecord.objects.get(name="knowledge.vectorize_document")
    assert record.args == [document.pk]
    assert record.owner == alice
    assert record.target == document
    assert record.queue == "knowledge_default"
    send_task.assert_called_once()
    assert document.status == Status.PENDING


def test_vectorizing_for_a_remote_endpoint_goes_to_the_threads_workers_queue(
    kb, alice, no_broker
):
    remote = services.create_knowledge_base(
        alice, name="Remote", embedding_provider="openai", embedding_dimension=3
    )
    local = services.add_document(kb, title="L", content="x", vectorize=False)
    far = services.add_document(remote, title="R", content="x", vectorize=False)

    assert services.vectorize_queue(kb.pk) == "knowledge_default"
    assert services.vectorize_queue(remote.pk) == "knowledge_remote"
    assert services.submit_vectorize(local).queue == "knowledge_default"
    assert services.submit_vectorize(far).queue == "knowledge_remote"
    # a knowledge base deleted meanwhile: the task finds nothing to do anyway
    assert services.vectorize_queue(10**9) == "knowledge_default"


def test_add_document_without_vectorize_submits_nothing(kb):
    services.add_document(kb, title="T", content="Some text.", vectorize=False)

    assert not TaskRecord.objects.exists()


def test_vectorize_stores_chunks_with_float32_vectors_and_bumps_the_version(kb):
    before = version(kb)
    document = add_ready(kb, "Long", TEXT)

    chunks = list(document.chunks.all())
    assert document.status == Status.READY
    assert document.chunk_count == len(chunks) > 1
    assert document.vectorized_hash == document.content_hash
    assert document.last_vectorized_at is not None
    for chunk in chunks:
        assert chunk.knowledge_base_id == kb.pk
        assert chunk.text == TEXT[chunk.start : chunk.end]
        assert chunk.model_name == "hashing:v1"
        assert chunk.dimension == 384
        vector = np.frombuffer(chunk.embedding, dtype="<f4")
        assert vector.shape == (384,)
        assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    assert version(kb) == before + 1


def test_a_rerun_embeds_nothing_and_keeps_chunks_and_version(kb):
    document = add_ready(kb, "Long", TEXT)
    ids = list(document.chunks.values_list("id", flat=True))
    before = version(kb)

    outcome = vectorizing.vectorize_document(document.pk)

    assert outcome["embedded"] == 0
    assert outcome["reused"] == outcome["chunks"] == len(ids)
    assert list(document.chunks.values_list("id", flat=True)) == ids
    assert version(kb) == before  # vectors did not change: search cache stays warm


def test_an_edit_re_embeds_only_the_changed_chunks(kb):
    document = add_ready(kb, "Long", TEXT)
    total = document.chunk_count

    services.update_document(
        document, content=TEXT + " A brand new closing sentence.", vectorize=False
    )
    outcome = vectorizing.vectorize_document(document.pk)

    assert outcome["status"] == "ready"
    assert outcome["embedded"] == 1  # only the last chunk's text changed
    assert outcome["reused"] == total - 1
    document.refresh_from_db()
    assert document.vectorized_hash == document.content_hash


def test_reuse_false_embeds_every_chunk_again(kb):
    document = add_ready(kb, "Long", TEXT)

    with patch.object(
        embeddings, "embed_with", wraps=embeddings.embed_with
    ) as embed_with:
        outcome = vectorizing.vectorize_document(document.pk, reuse=False)

    assert outcome["embedded"] == document.chunk_count
    assert sum(len(call.args[1]) for call in embed_with.call_args_list) == (
        document.chunk_count
    )


def test_vectors_are_reused_across_documents_with_the_same_text(kb):
    add_ready(kb, "First", TEXT)
    second = services.add_document(kb, title="Copy", content=TEXT, vectorize=False)

    outcome = vectorizing.vectorize_document(second.pk)

    assert outcome["embedded"] == 0
    assert Chunk.objects.filter(document=second).count() == outcome["chunks"]


def test_vectorize_embeds_in_batches(kb, settings):
    settings.EMBEDDING_BATCH_SIZE = 2
    with patch.object(
        embeddings, "embed_with", wraps=embeddings.embed_with
    ) as embed_with:
        document = add_ready(kb, "Long", TEXT)

    sizes = [len(call.args[1]) for call in embed_with.call_args_list]
    assert sum(sizes) == document.chunk_count
    assert max(sizes) == 2


def test_a_missing_document_is_skipped():
    assert vectorizing.vectorize_document(10**9)["status"] == "missing"


def test_an_empty_document_is_ready_with_no_chunks(kb):
    document = add_ready(kb, "Empty", "   ")

    assert document.status == Status.READY
    assert document.chunk_count == 0


def test_a_permanent_provider_error_marks_the_document_failed_and_keeps_old_chunks(
    kb,
):
    document = add_ready(kb, "Long", TEXT)
    ids = set(document.chunks.values_list("id", flat=True))
    services.update_document(document, content=TEXT + " More.", vectorize=False)

    rejected = embeddings.EmbeddingRejected("model says no")
    with (
        patch.object(embeddings, "embed_with", side_effect=rejected),
        pytest.raises(services.VectorizeFailed) as caught,
    ):
        vectorizing.vectorize_document(document.pk)

    document.refresh_from_db()
    assert document.status == Status.FAILED
    assert document.error == "model says no"
    assert caught.value.outcome == {
        "document_id": document.pk,
        "status": "failed",
        "error": "model says no",
    }
    assert set(document.chunks.values_list("id", flat=True)) == ids


def test_a_run_past_its_deadline_fails_the_document_as_a_soft_limit_would(kb, settings):
    # the threads pool has no soft time limit: the deadline ends the run instead,
    # checked before each embedding batch (each of which takes 0.1 s here)
    settings.EMBEDDING_BATCH_SIZE = 1
    document = services.add_document(kb, title="T", content=TEXT, vectorize=False)
    chunks = len(chunk_text(TEXT))

    real = embeddings.embed_with

    def slow(provider, texts):
        time.sleep(0.1)
        return real(provider, texts)

    with (
        patch.object(embeddings, "embed_with", side_effect=slow) as calls,
        pytest.raises(services.VectorizeFailed),
    ):
        vectorizing.vectorize_document(document.pk, deadline=time.monotonic() + 0.25)

    document.refresh_from_db()
    assert 1 <= calls.call_count < chunks
    assert (document.status, document.error) == (
        Status.FAILED,
        "Time limit exceeded: time limit reached after embedding "
        f"{calls.call_count} of {chunks} chunks",
    )
    assert not document.chunks.exists()


def test_a_transient_error_propagates_for_a_retry_unless_final(kb):
    document = services.add_document(kb, title="T", content=TEXT, vectorize=False)
    down = embeddings.EmbeddingUnavailable("endpoint down")

    with (
        patch.object(embeddings, "embed_with", side_effect=down),
        pytest.raises(embeddings.EmbeddingUnavailable),
    ):
        vectorizing.vectorize_document(document.pk, final_attempt=False)
    document.refresh_from_db()
    assert document.status == Status.PENDING
    assert "will retry" in document.error

    with (
        patch.object(embeddings, "embed_with", side_effect=down),
        pytest.raises(services.VectorizeFailed),
    ):
        vectorizing.vectorize_document(document.pk, final_attempt=True)
    document.refresh_from_db()
    assert (document.status, document.error) == (Status.FAILED, "endpoint down")


def test_delete_document_bumps_the_version_when_it_had_vectors(kb):
    document = add_ready(kb, "Long", TEXT)
    before = version(kb)

    services.delete_document(document)

    assert version(kb) == before + 1
    assert not Chunk.objects.exists()


def test_stored_vectors_loads_one_vector_per_text_however_many_share_it(
    kb, django_assert_num_queries
):
    copies = [add_ready(kb, f"Copy {i}", TEXT) for i in range(3)]
    hashes = set(copies[0].chunks.values_list("content_hash", flat=True))

    with django_assert_num_queries(2):  # one id per hash, then those vectors
        found = vectorizing.stored_vectors(hashes, "hashing:v1", 384)

    assert set(found) == hashes
    assert all(len(blob) == 384 * 4 for blob in found.values())


def test_a_vectorize_over_the_rate_limit_is_deferred_then_gives_up(kb, settings):
    from celery.exceptions import Retry

    from knowledge import tasks
    from tasks_app.ratelimit import RateLimited

    settings.KNOWLEDGE_MAX_DEFERRALS = 2
    document = services.add_document(kb, title="T", content=TEXT, vectorize=False)
    task = tasks.vectorize_document_task
    full = RateLimited("knowledge.vectorize_document", 5, 60, retry_in=7.5)

    def run(retries: int):
        task.push_request(retries=retries, kwargs={"raise_on_failure": False})
        try:
            return task.run(document.pk, raise_on_failure=False)
        finally:
            task.pop_request()

    with (
        patch.object(vectorizing, "take_vectorize_slot", side_effect=full),
        patch.object(task, "retry", side_effect=Retry) as retry,
    ):
        # deferred while deferrals are left: a retry at the next free window
        with pytest.raises(Retry):
            run(retries=1)
        assert retry.call_args.kwargs["countdown"] == 7.5
        document.refresh_from_db()
        assert document.status == Status.PENDING

        # then the document fails, reported as the chord member's outcome
        outcome = run(retries=2)
    document.refresh_from_db()
    assert outcome["status"] == "failed"
    assert document.status == Status.FAILED
    assert document.error.startswith("RateLimited: Rate limit knowledge.vectorize")
