"""The writing jobs' admin through Django's test client."""

from __future__ import annotations

import pytest
from django.urls import reverse

from knowledge.tests.conftest import add_ready
from tasks_app.models import TaskRecord
from writing import jobs, sections
from writing.models import WritingJob

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


@pytest.fixture
def library(kb):
    return [
        add_ready(kb, "Cats", "Cats purr when they are content. They nap a lot."),
        add_ready(kb, "Rockets", "Rockets burn kerosene to reach orbit."),
        add_ready(kb, "茶", "绿茶和红茶是最常见的两种茶叶。"),
    ]


@pytest.fixture
def written(alice, kb, library):
    """A document job written in-process (no worker), with its task records."""
    outline = {
        "title": "Pets and rockets",
        "sections": [
            {
                "heading": doc.title,
                "key_points": [f"About {doc.title}"],
                "passages": [{"chunk_id": doc.chunks.get().pk}],
            }
            for doc in library[:2]
        ],
    }
    job = jobs.start_document_job(alice, outline=outline, job_id="doc-1").job
    for position in sections.plan_sections(job.pk).positions:
        sections.write_section(job.pk, position, final_attempt=True)
    sections.finish_document(job.pk, celery_id=job.task.celery_id)
    job.refresh_from_db()
    return job


def test_a_job_page_shows_its_outline_document_references_and_tasks(
    admin_client, written
):
    url = reverse("admin:writing_writingjob_change", args=[written.pk])

    html = admin_client.get(url).content.decode()

    assert 'class="claw-outline"' in html and "About Cats" in html
    assert 'class="claw-sections"' in html and "Rockets" in html
    assert 'class="claw-document"' in html and "# Pets and rockets" in html
    assert 'class="claw-references"' in html
    chunk = written.references[0]["chunk_id"]
    assert f"<td>{chunk}</td>" in html
    document = reverse(
        "admin:knowledge_document_change", args=[written.references[0]["document_id"]]
    )
    assert document in html
    task = reverse("admin:tasks_app_taskrecord_change", args=[written.task_id])
    assert task in html  # the job's task in the inline, linking to its timeline


def test_the_job_list_shows_state_and_progress(admin_client, written):
    html = admin_client.get(reverse("admin:writing_writingjob_changelist"))

    text = html.content.decode()
    assert "doc-1" in text and "Succeeded" in text and "2 of 2 sections" in text


def test_cancel_selected_jobs_reports_cancelled_and_skipped(
    admin_client, alice, kb, written
):
    running = jobs.start_outline_job(
        alice, task_prompt="cats", knowledge_bases=[kb], job_id="plan"
    ).job
    url = reverse("admin:writing_writingjob_changelist")

    response = admin_client.post(
        url,
        {"action": "cancel_selected", "_selected_action": [running.pk, written.pk]},
        follow=True,
    )

    text = response.content.decode()
    assert "Cancelled 1 job(s); skipped 1 already finished (1 succeeded)." in text
    running.refresh_from_db()
    assert running.state == "cancelled"
    assert TaskRecord.objects.get(pk=running.task_id).state == "REVOKED"


def test_deleting_a_job_in_the_admin_cancels_its_tasks_first(admin_client, alice, kb):
    job = jobs.start_outline_job(
        alice, task_prompt="cats", knowledge_bases=[kb], job_id="plan"
    ).job
    url = reverse("admin:writing_writingjob_delete", args=[job.pk])

    response = admin_client.post(url, {"post": "yes"})

    assert response.status_code == 302
    assert not WritingJob.objects.exists()
    assert TaskRecord.objects.get(pk=job.task_id).state == "REVOKED"


def test_a_job_page_is_live(admin_client, written):
    """Its state, progress and sections are blocks the live script refreshes."""
    url = reverse("admin:writing_writingjob_change", args=[written.pk])

    html = admin_client.get(url).content.decode()

    assert "tasks_app/live.js" in html and "data-claw-live=" in html
    for block in ("state", "progress", "sections"):
        assert f'data-claw-swap="{block}-{written.pk}"' in html
