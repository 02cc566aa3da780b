"""Planning and summarising knowledge-base updates; deleting vectors (no worker)."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from celery.app.task import Context
from celery.exceptions import ChordError

from knowledge import services, tasks, vectorizing
from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.tests.conftest import add_ready
from tasks_app import services as ledger
from tasks_app.models import TaskRecord

pytestmark = pytest.mark.django_db
Status = Document.Status


@pytest.fixture
def three(kb):
    ready = add_ready(kb, "Ready", "Unchanged text. It stays the same.")
    edited = add_ready(kb, "Edited", "Old text.")
    services.update_document(edited, content="New text.", vectorize=False)
    new = services.add_document(kb, title="New", content="Never vectorized.")
    return ready, edited, new


def test_incremental_picks_changed_new_failed_and_stuck_documents(kb, three):
    ready, edited, new = three
    failed = add_ready(kb, "Failed", "Fine text.")
    stuck = add_ready(kb, "Stuck", "Its run was killed.")
    Document.objects.filter(pk=failed.pk).update(status=Status.FAILED)
    Document.objects.filter(pk=stuck.pk).update(status=Status.VECTORIZING)

    ids = vectorizing.plan_update(kb.pk, "incremental")

    assert ids == sorted([edited.pk, new.pk, failed.pk, stuck.pk])
    assert Document.objects.get(pk=edited.pk).status == Status.PENDING


def test_full_picks_every_document_and_keeps_vectors(kb, three):
    chunks = Chunk.objects.count()

    assert vectorizing.plan_update(kb.pk, "full") == sorted(d.pk for d in three)
    assert Chunk.objects.count() == chunks


def test_rebuild_drops_every_vector_first(kb, three):
    ids = vectorizing.plan_update(kb.pk, "rebuild")

    assert ids == sorted(d.pk for d in three)
    assert not Chunk.objects.exists()
    assert set(Document.objects.values_list("vectorized_hash", flat=True)) == {""}


def test_plan_update_of_a_missing_kb_is_none_and_a_bad_mode_is_refused(kb):
    assert vectorizing.plan_update(10**9, "full") is None
    with pytest.raises(services.InvalidInput, match="^mode:"):
        vectorizing.plan_update(kb.pk, "sideways")


def test_finish_update_sums_the_outcomes():
    outcomes = [
        {"document_id": 1, "status": "ready", "chunks": 3, "embedded": 1, "reused": 2},
        {"document_id": 2, "status": "ready", "chunks": 2, "embedded": 2, "reused": 0},
        {"document_id": 3, "status": "missing"},
    ]

    summary = vectorizing.finish_update(outcomes, kb_id=7, mode="full")

    assert summary == {
        "knowledge_base": 7,
        "mode": "full",
        "documents": 3,
        "vectorized": [1, 2],
        "failed": [],
        "skipped": 1,
        "chunks": 5,
        "embedded": 3,
        "reused": 2,
    }


def test_finish_update_names_failed_documents(kb):
    doc = services.add_document(kb, title="Manual", content="x", vectorize=False)
    outcomes = [
        {"document_id": doc.pk, "status": "failed", "error": "endpoint said 400"},
        {"document_id": 10**9, "status": "failed", "error": "gone"},
        {"document_id": 5, "status": "ready", "chunks": 1, "embedded": 1},
    ]

    with pytest.raises(services.UpdateFailed) as caught:
        vectorizing.finish_update(outcomes, kb_id=kb.pk, mode="incremental")

    assert str(caught.value) == (
        f"2 of 3 documents failed: #{doc.pk} 'Manual': endpoint said 400; "
        f"#{10**9} '(deleted)': gone"
    )


def test_delete_vectors_of_a_kb_works_in_batches_and_bumps_the_version(kb, three):
    ready, edited, _ = three
    version = KnowledgeBase.objects.get(pk=kb.pk).version

    with patch.object(vectorizing, "DELETE_BATCH_DOCUMENTS", 1):
        report = vectorizing.delete_vectors(kb_id=kb.pk)

    assert report == {"documents": 3, "chunks_deleted": 2}
    assert not Chunk.objects.exists()
    kb.refresh_from_db()
    assert kb.version == version + 2  # one bump per batch that deleted chunks
    assert set(Document.objects.values_list("status", "chunk_count")) == {
        (Status.PENDING, 0)
    }


def test_delete_vectors_of_one_document_leaves_the_others(kb, three):
    ready, edited, _ = three

    vectorizing.delete_vectors(document_id=edited.pk)

    assert set(Chunk.objects.values_list("document_id", flat=True)) == {ready.pk}
    with pytest.raises(services.InvalidInput):
        vectorizing.delete_vectors()


def test_the_chord_errback_fails_the_waiting_update_naming_failed_documents(kb):
    failed = services.add_document(kb, title="Broken", content="x", vectorize=False)
    Document.objects.filter(pk=failed.pk).update(status=Status.FAILED, error="boom")
    with patch.object(ledger, "publish", return_value=True):
        record = services.submit_update(kb, "full")
    ledger.mark_started(record.celery_id, name=services.UPDATE, worker="w")
    request = Context(id=record.celery_id, kwargs={"kb_id": kb.pk, "mode": "full"})

    tasks.update_broken_task(request, ChordError("Dependency x raised E()"), None)
    tasks.update_broken_task(request, ValueError("not a chord error"), None)

    record.refresh_from_db()
    assert record.state == TaskRecord.State.FAILURE
    assert record.error == (
        f"Update stopped: Dependency x raised E(); failed documents: "
        f"#{failed.pk} 'Broken': boom"
    )


def test_members_of_a_cancelled_update_skip_their_document(kb):
    document = services.add_document(kb, title="T", content="Text.", vectorize=False)
    with patch.object(ledger, "publish", return_value=True):
        update = services.submit_update(kb, "full")
    TaskRecord.objects.filter(pk=update.pk).update(cancel_requested=True)

    outcome = tasks.vectorize_document_task(document.pk, update=update.celery_id)

    assert outcome == {"document_id": document.pk, "status": "skipped"}
    assert not Chunk.objects.exists()


def test_members_count_finished_siblings_into_the_updates_progress(kb):
    with patch.object(ledger, "publish", return_value=True):
        update = services.submit_update(kb, "full")
        siblings = [
            ledger.submit(services.VECTORIZE, args=[n], parent=update) for n in range(3)
        ]
    ledger.mark_started(update.celery_id, name=services.UPDATE, worker="w")
    ledger.record_progress(update.celery_id, 0, 3)
    TaskRecord.objects.filter(pk=siblings[0].pk).update(state="SUCCESS")

    vectorizing.report_update_progress(update.celery_id)  # sibling 2 is finishing

    update.refresh_from_db()
    assert (update.progress_current, update.progress_total) == (2, 3)
    assert update.progress_message == "2 of 3 documents vectorized"


def test_manage_py_reindex_knowledge_queues_the_update_task(kb):
    from django.core.management import call_command

    with patch.object(ledger, "publish", return_value=True):
        call_command("reindex_knowledge", str(kb.pk), "--mode", "rebuild")

    record = TaskRecord.objects.get(name=services.UPDATE)
    assert (record.args, record.queue) == ([kb.pk, "rebuild"], "knowledge_default")
