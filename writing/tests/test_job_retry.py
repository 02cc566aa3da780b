"""Retrying a failed writing job reruns it from where it failed (its outline, or
its failed sections), through the API, the admin, the task API and
retry_failed; a job that cannot be rerun is refused with the reason."""

from __future__ import annotations

from io import StringIO
from unittest.mock import patch

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from claw import llm
from tasks_app import services as ledger
from tasks_app.models import TaskRecord
from tasks_app.tests.test_api import client_for
from writing import jobs
from writing.models import WritingJob, WritingSection
from writing.tests.test_jobs import (
    Scripted,
    inline_outline,
    library,  # noqa: F401 - fixture
    outline_job,
    write_all,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]
State = WritingJob.State


def ended(job: WritingJob, state: str) -> None:
    """What the worker's ledger does when the job's task ends (no worker here)."""
    TaskRecord.objects.filter(pk=job.task_id).update(
        state=state, finished_at=timezone.now()
    )


@pytest.fixture
def failed_document(alice, kb, library):  # noqa: F811
    chunks = [d.chunks.first() for d in library]
    job = jobs.start_document_job(alice, outline=inline_outline(chunks), job_id="d").job
    provider = Scripted("One [1].", llm.LLMRejected("answered 400: bad"), "Three [1].")
    with (
        patch.object(llm, "get_provider", return_value=provider),
        pytest.raises(jobs.JobFailed),
    ):
        write_all(job)
    ended(job, "FAILURE")
    job.refresh_from_db()
    assert job.state == State.FAILED
    return job


def test_the_api_reruns_a_failed_document_from_its_failed_section(
    alice, failed_document
):
    job = failed_document
    api = client_for(alice)

    response = api.post(f"/api/v1/jobs/{job.job_id}/retry/")
    again = api.post(f"/api/v1/jobs/{job.job_id}/retry/")

    assert response.status_code == 202, response.json()
    assert response.json()["state"] == "pending"
    assert again.status_code == 409 and "only a failed job" in again.json()["detail"]
    record = TaskRecord.objects.get(pk=job.task_id)
    assert record.state == "PENDING" and record.attempts >= 0
    # the new attempt rewrites only the failed section, then merges
    with patch.object(llm, "get_provider", return_value=Scripted("Two [1].")):
        write_all(job)
    job.refresh_from_db()
    assert job.state == State.SUCCEEDED, job.error
    assert "Two" in job.content and "One" in job.content
    assert set(job.sections.values_list("status", flat=True)) == {"done"}


def test_retrying_the_jobs_task_reopens_the_job_instead_of_skipping(failed_document):
    job = failed_document
    ledger.retry(job.task)  # as the task API, the admin and retry_failed do
    job.refresh_from_db()
    assert job.state == State.PENDING and job.error == ""
    with patch.object(llm, "get_provider", return_value=Scripted("Two [1].")):
        outcome = write_all(job)
    assert outcome["status"] != "skipped"
    job.refresh_from_db()
    assert job.state == State.SUCCEEDED


def test_retry_failed_reruns_failed_jobs(failed_document):
    out = StringIO()
    call_command(
        "retry_failed",
        "--task",
        jobs.DOCUMENT_TASK,
        "--since",
        "2020-01-01",
        stdout=out,
    )
    assert "Retried 1" in out.getvalue()
    failed_document.refresh_from_db()
    assert failed_document.state == State.PENDING


def test_a_section_task_is_not_retried_alone(failed_document):
    section = failed_document.sections.get(status=WritingSection.Status.FAILED)
    record = TaskRecord.objects.create(
        name=jobs.SECTION_TASK,
        args=[failed_document.pk, section.position],
        state="FAILURE",
        celery_id="section-attempt",
    )
    with pytest.raises(ledger.InvalidTransition, match="retry the job instead"):
        ledger.retry(record)
    record.refresh_from_db()
    assert record.state == "FAILURE"  # nothing half-written


def test_a_cancelled_job_refuses_with_its_reason(alice, kb, library):  # noqa: F811
    job = outline_job(alice, kb)
    with patch("tasks_app.workers.revoke"):
        jobs.cancel_job(job)
    job.refresh_from_db()
    ended(job, "REVOKED")

    with pytest.raises(ledger.InvalidTransition, match="cancelled: only a failed"):
        ledger.retry(job.task)
    response = client_for(alice).post(f"/api/v1/jobs/{job.job_id}/retry/")

    assert response.status_code == 409 and "cancelled" in response.json()["detail"]
    assert TaskRecord.objects.get(pk=job.task_id).state == "REVOKED"


def test_a_failed_outline_is_rerun_and_the_admin_retries_jobs(
    admin_client,
    alice,
    kb,
    library,  # noqa: F811
):
    job = outline_job(alice, kb)
    jobs.fail_job(job.pk, error="LLMRejected: answered 400")
    ended(job, "FAILURE")

    response = admin_client.post(
        reverse("admin:writing_writingjob_changelist"),
        {"action": "retry_selected", "_selected_action": [job.pk]},
        follow=True,
    )

    assert "Retried 1 job(s); skipped 0." in response.content.decode()
    job.refresh_from_db()
    assert job.state == State.PENDING
    jobs.generate_outline(job.pk)
    job.refresh_from_db()
    assert job.state == State.SUCCEEDED and job.outline["sections"]


@pytest.mark.parametrize(
    "name, args",
    [
        ("knowledge.generate_document_from_outline", [{"not": "a job"}]),
        ("knowledge.write_section", [["junk"], 0]),
        ("knowledge.write_section", []),
    ],
)
def test_a_retry_whose_stored_arguments_name_no_job_is_a_409(staff, name, args):
    # Staff may edit a record's arguments; a writing task's retry handler must
    # then refuse what names no job, not fail with a 500.
    record = TaskRecord.objects.create(
        name=name, celery_id=f"junk-{len(args)}", state="FAILURE", args=args
    )

    answer = client_for(staff).post(f"/api/v1/tasks/{record.pk}/retry/")

    assert answer.status_code == 409, answer.content
    assert "writing job" in answer.json()["detail"]
