"""Writing jobs end to end with the real session worker and the extractive
provider: an outline from a query, then a document from that outline."""

from __future__ import annotations

from datetime import timedelta
from unittest.mock import patch

import pytest
from django.conf import settings
from django.utils import timezone

from knowledge import services
from knowledge.models import Chunk, Document
from knowledge.tests.conftest import add_ready
from tasks_app import maintenance
from tasks_app import services as ledger
from tasks_app.models import TaskRecord
from tasks_app.tests.test_api import client_for
from tests.harness import wait_for
from writing import jobs, sections
from writing.models import WritingJob

pytestmark = [pytest.mark.worker]

LIBRARY = {
    "Green tea": "Green tea is steamed soon after picking. Steaming keeps the "
    "leaves green. Japanese green tea is often steamed twice.",
    "Black tea": "Black tea is fully oxidised before drying. Oxidation turns the "
    "leaves dark. Black tea brews a strong cup.",
    "Oolong tea": "Oolong tea is partly oxidised. Its flavour sits between green "
    "and black tea.",
    "Rockets": "Rockets burn kerosene and liquid oxygen. Stages drop away on the "
    "way to orbit.",
}


def wait_job(user, job_id: str, timeout: float = 60) -> WritingJob:
    def ended():
        job = WritingJob.objects.get(owner=user, job_id=job_id)
        return job if job.is_final else None

    return wait_for(ended, timeout, interval=0.2, message=f"job {job_id} to end")


def test_an_outline_then_a_document_cite_real_chunks(
    transactional_db, celery_worker, alice
):
    # given a knowledge base on tea (and one unrelated document), vectorized
    kb = services.create_knowledge_base(alice, name="Tea handbook")
    library = {title: add_ready(kb, title, text) for title, text in LIBRARY.items()}
    api = client_for(alice)

    # when an outline is asked for, at the path
    response = api.post(
        "/api/v1/jobs/outline",
        {
            "job_id": "tea-plan",
            "task_prompt": "How green, black and oolong tea are made.",
            "knowledge_base_ids": [kb.pk],
        },
        format="json",
    )
    assert response.status_code == 202, response.json()
    outline_job = wait_job(alice, "tea-plan")

    # then the outline's sections come from the documents, with real passages
    assert outline_job.state == "succeeded", outline_job.error
    outline = api.get("/api/v1/jobs/tea-plan/").json()["outline"]
    assert outline["title"] == "How green, black and oolong tea are made"
    headings = [section["heading"] for section in outline["sections"]]
    assert {"Green tea", "Black tea", "Oolong tea"} <= set(headings)
    for section in outline["sections"]:
        assert section["key_points"] and section["passages"]
        for passage in section["passages"]:
            chunk = Chunk.objects.get(pk=passage["chunk_id"])
            assert (
                chunk.document.title == section["heading"] == passage["document_title"]
            )

    # when a document is written from that outline into the knowledge base
    response = api.post(
        "/api/v1/jobs/document/",
        {"job_id": "tea-doc", "outline": "tea-plan", "knowledge_base_id": kb.pk},
        format="json",
    )
    assert response.status_code == 202, response.json()
    wait_job(alice, "tea-doc")
    body = api.get("/api/v1/jobs/tea-doc/").json()

    # then it succeeded, one section task per section, all in the chord
    assert body["state"] == "succeeded", body["error"]
    total = len(outline["sections"])
    assert body["progress"] == {"done": total, "total": total, "percent": 100}
    assert [s["status"] for s in body["sections"]] == ["done"] * total
    job = WritingJob.objects.get(job_id="tea-doc")
    children = TaskRecord.objects.filter(parent=job.task, name=jobs.SECTION_TASK)
    assert children.count() == total
    assert all(record.target == job for record in children)
    wait_for(
        lambda: set(children.values_list("state", flat=True)) == {"SUCCESS"},
        30,
        message="every section task to succeed",
    )
    job.task.refresh_from_db()
    assert (job.task.state, job.task.attempts) == ("SUCCESS", 2)  # fan-out, merge

    # and every reference points at a real chunk of the document it names
    document = body["document"]
    assert document["references"]
    for reference in document["references"]:
        chunk = Chunk.objects.get(pk=reference["chunk_id"])
        assert chunk.document_id == reference["document_id"]
        assert chunk.document.title == reference["document_title"]
        assert chunk.text == reference["text"]
        assert f"[{reference['n']}]" in document["content"]
    cited = {reference["document_id"] for reference in document["references"]}
    assert library["Rockets"].pk not in cited
    assert document["content"].startswith(f"# {outline['title']}\n")

    # and the written document is in the knowledge base, vectorized by the worker
    stored = Document.objects.get(pk=document["document_id"])
    assert stored.knowledge_base == kb and stored.content == document["content"]
    wait_for(
        lambda: Document.objects.get(pk=stored.pk).status == "ready",
        30,
        message="the written document to be vectorized",
    )

    # and the timeline shows the job's progress, section by section
    kinds = [event["kind"] for event in body["events"] if event["task"] == job.task_id]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "succeeded"
    progress = [
        e["data"]["current"]
        for e in body["events"]
        if e["kind"] == "progress" and e["task"] == job.task_id
    ]
    assert progress[-1] == total and len(progress) >= total
    sections = {e["section"] for e in body["events"] if e["task"] != job.task_id}
    assert sections == set(range(total))


# --- the health check: chords that will never call back -------------------------


def unpublished_job(alice) -> WritingJob:
    """A one-section document job whose task never reached the broker: each test
    plays the part of the dead worker that took it."""
    kb = services.create_knowledge_base(alice, name="Teas")
    chunk = add_ready(kb, "Green tea", LIBRARY["Green tea"]).chunks.get()
    outline = {
        "title": "Teas",
        "sections": [{"heading": "Green", "passages": [{"chunk_id": chunk.pk}]}],
    }
    with patch.object(ledger, "publish", return_value=True):
        job = jobs.start_document_job(alice, outline=outline).job
    ledger.mark_started(job.task.celery_id, name=jobs.DOCUMENT_TASK, worker="gone@h")
    sections.plan_sections(job.pk)
    return job


def started_long_ago(record: TaskRecord, seconds: float) -> None:
    TaskRecord.objects.filter(pk=record.pk).update(
        started_at=timezone.now() - timedelta(seconds=seconds)
    )


def test_a_section_requeued_by_the_health_check_finishes_the_job_itself(
    transactional_db, celery_worker, alice
):
    # given the job's one section task STARTED on a worker that died with it:
    # the chord will never call back
    job = unpublished_job(alice)
    with patch.object(ledger, "publish", return_value=True):
        member = ledger.submit(
            jobs.SECTION_TASK, args=[job.pk, 0], target=job, parent=job.task
        )
    ledger.mark_started(member.celery_id, name=jobs.SECTION_TASK, worker="gone@h")
    started_long_ago(member, settings.JOBS_SECTION_TIME_LIMIT + 5)

    # when the health check finds it lost, it re-queues it (alone, outside the chord)
    report = maintenance.check_health(alerts_enabled=False)

    # then that run writes the section and finishes the job and its waiting record
    assert report["requeued"] == [member.pk]
    wait_job(alice, job.job_id)
    job.refresh_from_db()
    assert job.state == "succeeded", job.error
    assert "## Green" in job.content and job.references
    wait_for(
        lambda: TaskRecord.objects.get(pk=job.task_id).state == "SUCCESS",
        10,
        message="the job's task to end",
    )
    member.refresh_from_db()
    assert (member.state, member.attempts) == ("SUCCESS", 2)


def test_a_job_task_whose_chord_never_called_back_is_merged_when_requeued(
    transactional_db, celery_worker, alice
):
    # given every section written, but the callback lost with its worker
    job = unpublished_job(alice)
    sections.write_section(job.pk, 0, final_attempt=True)
    started_long_ago(job.task, 300 + 5)  # the task's hard time limit

    # when the health check re-queues the job's task (no section is active)
    report = maintenance.check_health(alerts_enabled=False)

    # then the re-run merges the sections it finds written, without rewriting them
    assert report["requeued"] == [job.task_id]
    wait_job(alice, job.job_id)
    job.refresh_from_db()
    assert job.state == "succeeded", job.error
    assert job.content.startswith("# Teas\n\n## Green\n")
    assert not TaskRecord.objects.filter(name=jobs.SECTION_TASK).exists()


def test_a_failed_outline_retried_through_the_api_succeeds_on_a_real_worker(
    transactional_db, celery_worker, alice
):
    kb = services.create_knowledge_base(alice, name="Empty at first")
    api = client_for(alice)
    response = api.post(
        "/api/v1/jobs/outline",
        {"job_id": "again", "task_prompt": "Tea.", "knowledge_base_ids": [kb.pk]},
        format="json",
    )
    assert response.status_code == 202, response.json()

    def state():
        job = WritingJob.objects.get(owner=alice, job_id="again")
        return job if job.is_final and job.task.is_final else None

    failed = wait_for(state, 60, interval=0.2, message="the job to fail")
    assert failed.state == WritingJob.State.FAILED and "No passage" in failed.error
    add_ready(kb, "Tea", "Green tea is steamed. Black tea is oxidised.")

    retried = api.post("/api/v1/jobs/again/retry/")

    assert retried.status_code == 202, retried.json()
    job = wait_for(state, 60, interval=0.2, message="the retried job to end")
    assert job.state == WritingJob.State.SUCCEEDED, job.error
    assert job.task.state == "SUCCESS" and job.task.attempts == 2
    kinds = list(job.task.events.values_list("kind", flat=True))
    assert kinds.count("queued") == 2 and kinds[-1] == "succeeded"
