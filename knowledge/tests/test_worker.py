"""The knowledge tasks with the real session worker (PostgreSQL + Redis).

Counts come from what the worker wrote: the update's summary (its stored result),
the vectorize records it fanned out, and the documents' last_vectorized_at.
"""

from __future__ import annotations

import json
from unittest.mock import patch

import pytest
from celery import chord
from django_celery_results.models import TaskResult

from claw.celery import app
from knowledge import search, services, tasks, vectorizing
from knowledge.models import Chunk, Document
from tasks_app import services as ledger
from tasks_app.models import TaskRecord
from tests import harness
from tests.harness import wait_for

pytestmark = [pytest.mark.worker]
State = TaskRecord.State
Status = Document.Status

EN_TOPICS = [
    "volcanoes", "glaciers", "coral reefs", "deserts", "rainforests",
    "tides", "hurricanes", "earthquakes", "rivers", "caves",
    "meteors", "auroras", "geysers", "monsoons", "fjords",
    "savannas", "wetlands", "tundra", "canyons", "islands",
    "lagoons", "dunes", "plateaus", "estuaries", "atolls",
]  # fmt: skip
ZH_TOPICS = [
    "长城", "故宫", "兵马俑", "西湖", "黄山",
    "泰山", "敦煌", "丽江", "桂林", "九寨沟",
    "苏州园林", "布达拉宫", "张家界", "三峡", "洱海",
    "乐山大佛", "鼓浪屿", "周庄", "平遥古城", "凤凰古城",
    "天坛", "颐和园", "黄鹤楼", "滕王阁", "岳阳楼",
]  # fmt: skip


def english(i: int, topic: str) -> str:
    return " ".join(
        f"Field note {i}.{n}: {topic} shape the landscape in region {i} and "
        f"observers record {topic} every season number {n}."
        for n in range(12)
    )


def chinese(i: int, topic: str) -> str:
    return "".join(
        f"第{n}条笔记：{topic}是著名的旅游胜地，游客在第{n}个季节参观{topic}。"
        for n in range(12)
    )


def wait_final(record: TaskRecord, timeout: float = 60) -> TaskRecord:
    # A knowledge task embeds and writes chunks: more time than the default.
    return harness.wait_final(record, timeout, interval=0.2)


def run_update(kb, mode: str) -> tuple[TaskRecord, dict | None]:
    record = wait_final(services.submit_update(kb, mode, owner=kb.owner))
    stored = TaskResult.objects.filter(task_id=record.celery_id).first()
    summary = (
        json.loads(stored.result) if stored and record.state == "SUCCESS" else None
    )
    return record, summary


def vectorize_children(record: TaskRecord):
    return TaskRecord.objects.filter(parent=record, name=services.VECTORIZE)


def test_an_added_document_is_vectorized_by_a_worker_and_found(
    transactional_db, celery_worker, alice
):
    kb = services.create_knowledge_base(alice, name="Handbook")
    document = services.add_document(
        kb, title="Tea", content="绿茶和红茶是最常见的两种茶叶。Green tea is popular."
    )
    record = wait_final(TaskRecord.objects.get(name=services.VECTORIZE))

    document.refresh_from_db()
    assert record.state == State.SUCCESS, record.error
    assert document.status == Status.READY
    assert search.search(kb, "红茶", k=1)[0].document_id == document.pk


def test_incremental_full_cycle_embeds_exactly_what_changed(
    transactional_db, celery_worker, alice
):
    # given 50 documents, half Chinese, half English, not vectorized yet
    kb = services.create_knowledge_base(alice, name="Atlas")
    documents = [
        services.add_document(
            kb, title=f"en {t}", content=english(i, t), vectorize=False
        )
        for i, t in enumerate(EN_TOPICS)
    ] + [
        services.add_document(
            kb, title=f"zh {t}", content=chinese(i, t), vectorize=False
        )
        for i, t in enumerate(ZH_TOPICS)
    ]

    # when an incremental update runs, every document becomes ready
    record, summary = run_update(kb, "incremental")
    assert record.state == State.SUCCESS, record.error
    assert sorted(summary["vectorized"]) == sorted(d.pk for d in documents)
    assert summary["failed"] == []
    assert summary["embedded"] == summary["chunks"] == Chunk.objects.count()
    assert not Document.objects.exclude(status=Status.READY).exists()
    assert vectorize_children(record).count() == 50
    assert (record.progress_current, record.progress_total) == (50, 50)
    assert record.attempts == 2  # the fan-out run, then the summary under its id
    progress = record.events.filter(kind="progress").values_list("data", flat=True)
    assert any(0 < p["current"] < 50 for p in progress)  # overall, while it ran
    assert record.target == kb

    # when 3 documents are edited and incremental runs again
    edited = [documents[3], documents[17], documents[30]]
    before = dict(Document.objects.values_list("id", "last_vectorized_at"))
    for document in edited:
        services.update_document(
            document,
            content=document.content + f" Appendix for {document.title}: "
            "the quartz lantern ferry crosses at dawn.",
            vectorize=False,
        )
    record, summary = run_update(kb, "incremental")

    # then exactly those 3 are embedded again, one new chunk each
    assert record.state == State.SUCCESS, record.error
    assert sorted(summary["vectorized"]) == sorted(d.pk for d in edited)
    assert summary["embedded"] == 3
    assert sorted(
        vectorize_children(record).values_list("object_id", flat=True)
    ) == sorted(d.pk for d in edited)
    after = dict(Document.objects.values_list("id", "last_vectorized_at"))
    changed = {pk for pk in after if after[pk] != before[pk]}
    assert changed == {d.pk for d in edited}

    # and a query copied from an edited document finds it first
    hit = search.search(kb, "quartz lantern ferry crosses at dawn", k=3)[0]
    assert hit.document_id in changed
    target = documents[17]
    target.refresh_from_db()
    query = target.content[-120:]
    assert search.search(kb, query, k=1)[0].document_id == target.pk

    # when rebuilt, every chunk of every document is embedded again
    record, summary = run_update(kb, "rebuild")
    assert record.state == State.SUCCESS, record.error
    assert len(summary["vectorized"]) == 50
    assert summary["embedded"] == summary["chunks"] == Chunk.objects.count()
    assert summary["reused"] == 0


def test_a_permanent_provider_failure_fails_the_document_and_the_update_says_so(
    transactional_db, celery_worker, alice
):
    # sentence-transformers with a model that is not installed here: a permanent
    # error (EmbeddingRejected) in every environment, package installed or not.
    kb = services.create_knowledge_base(
        alice,
        name="Broken",
        embedding_provider="sentence-transformers",
        embedding_model="claw-tests/no-such-local-model",
    )
    broken = services.add_document(kb, title="Doomed", content="Some text here.")
    standalone = wait_final(TaskRecord.objects.get(name=services.VECTORIZE))

    assert standalone.state == State.FAILURE
    assert "VectorizeFailed" in standalone.error
    broken.refresh_from_db()
    assert broken.status == Status.FAILED
    assert "sentence-transformers" in broken.error

    services.add_document(kb, title="Second", content="More text.", vectorize=False)
    record, _ = run_update(kb, "incremental")

    assert record.state == State.FAILURE
    assert "2 of 2 documents failed" in record.error
    assert "'Doomed'" in record.error and "'Second'" in record.error
    assert "not installed" in record.error
    assert {s for s in Document.objects.values_list("status", flat=True)} == {
        Status.FAILED
    }
    # the members themselves succeeded: they reported the failure as an outcome
    # (the last one's success is recorded just after the callback was published)
    wait_for(
        lambda: (
            set(vectorize_children(record).values_list("state", flat=True))
            == {State.SUCCESS}
        ),
        30,
        message="both members to succeed",
    )


def test_an_update_with_nothing_to_do_finishes_at_once(
    transactional_db, celery_worker, alice
):
    kb = services.create_knowledge_base(alice, name="Empty")

    record, summary = run_update(kb, "full")

    assert record.state == State.SUCCESS
    assert summary["documents"] == 0
    assert not TaskRecord.objects.filter(parent=record).exists()


def test_delete_vectors_on_a_worker_empties_the_knowledge_base(
    transactional_db, celery_worker, alice
):
    kb = services.create_knowledge_base(alice, name="Atlas")
    for i, topic in enumerate(EN_TOPICS[:3]):
        document = services.add_document(
            kb, title=topic, content=english(i, topic), vectorize=False
        )
        vectorizing.vectorize_document(document.pk)

    record = wait_final(services.submit_delete_vectors(kb=kb, owner=alice))

    assert record.state == State.SUCCESS, record.error
    assert not Chunk.objects.exists()
    assert set(Document.objects.values_list("chunk_count", "status")) == {
        (0, Status.PENDING)
    }
    assert search.search(kb, "volcanoes") == []


def test_a_chord_broken_by_a_member_that_failed_outright_still_ends_the_update(
    transactional_db, celery_worker, alice
):
    # A member that raises (say killed at its hard time limit) makes Celery fail
    # the chord without running the callback; the errback must end the update's
    # record, which would otherwise wait in STARTED. The update's record here is
    # one that was never published, started by hand, as Task.replace leaves it.
    kb = services.create_knowledge_base(alice, name="Atlas")
    document = services.add_document(kb, title="Bad", content="x", vectorize=False)
    vectorizing.vectorize_document(document.pk)
    Document.objects.filter(pk=document.pk).update(status=Status.FAILED, error="bad")
    with patch.object(ledger, "publish", return_value=True):
        record = services.submit_update(kb, "full", owner=alice)
    ledger.mark_started(record.celery_id, name=services.UPDATE, worker="gone@host")
    callback = tasks.update_callback(kb.pk, "full").set(task_id=record.celery_id)

    chord([app.signature("tests.fail", args=["member blew up"])], callback).delay()

    wait_final(record)
    assert record.state == State.FAILURE
    assert record.error.startswith("Update stopped: ")
    assert "member blew up" in record.error
    assert f"#{document.pk} 'Bad': bad" in record.error
