"""writing.jobs: writing jobs' services, with the task bodies run in-process."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from celery.exceptions import Retry
from django.test import override_settings

from claw import llm
from claw.tests.conftest import in_threads
from knowledge import services
from knowledge.models import Chunk, Document
from knowledge.tests.conftest import add_ready
from tasks_app.models import TaskRecord
from writing import jobs, sections, tasks
from writing.models import WritingJob, WritingSection

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]
State = WritingJob.State
Status = WritingSection.Status


@pytest.fixture
def library(kb):
    return [
        add_ready(kb, "Green tea", "Green tea is steamed. Green tea stays green."),
        add_ready(kb, "Black tea", "Black tea is oxidised. Black tea tastes strong."),
        add_ready(kb, "Rockets", "Rockets burn kerosene. Rockets reach orbit."),
    ]


def outline_job(alice, kb, job_id="plan", prompt="green tea and black tea"):
    return jobs.start_outline_job(
        alice, task_prompt=prompt, knowledge_bases=[kb], job_id=job_id
    ).job


def succeeded_outline(alice, kb, **kwargs) -> WritingJob:
    job = outline_job(alice, kb, **kwargs)
    jobs.generate_outline(job.pk)
    job.refresh_from_db()
    assert job.state == State.SUCCEEDED, job.error
    return job


def inline_outline(chunks) -> dict:
    return {
        "title": "Teas",
        "sections": [
            {"heading": f"Part {n}", "key_points": [], "passages": [{"chunk_id": c.pk}]}
            for n, c in enumerate(chunks, 1)
        ],
    }


def write_all(job: WritingJob) -> dict:
    """What the chord does, in-process: every section, then the merge."""
    plan = sections.plan_sections(job.pk)
    for position in plan.positions:
        sections.write_section(job.pk, position, final_attempt=True)
    job.refresh_from_db()
    return sections.finish_document(job.pk, celery_id=job.task.celery_id)


def test_an_outline_job_is_created_once_with_its_task(alice, kb):
    started = jobs.start_outline_job(
        alice, task_prompt="tea", knowledge_bases=[kb], job_id="plan-1"
    )

    job = started.job
    assert started.created and (job.kind, job.state) == ("outline", State.PENDING)
    assert job.task.name == jobs.OUTLINE_TASK and job.task.owner == alice
    assert job.task.target == job and job.task.args == [job.pk]
    assert list(job.knowledge_bases.all()) == [kb]


def test_the_same_job_id_twice_finds_the_same_job(alice, kb):
    first = jobs.start_outline_job(alice, task_prompt="tea", knowledge_bases=[kb])
    again = jobs.start_outline_job(
        alice, task_prompt="tea", knowledge_bases=[kb], job_id=first.job.job_id
    )

    assert (again.created, again.job.pk) == (False, first.job.pk)
    assert WritingJob.objects.count() == 1 and TaskRecord.objects.count() == 1
    with pytest.raises(jobs.JobConflict, match="^job_id: "):
        jobs.start_outline_job(
            alice, task_prompt="coffee", knowledge_bases=[kb], job_id=first.job.job_id
        )


def test_one_job_id_names_one_job_per_user(alice, bob, kb):
    bobs_kb = services.create_knowledge_base(bob, name="Bob's")

    jobs.start_outline_job(alice, task_prompt="t", knowledge_bases=[kb], job_id="x")
    jobs.start_outline_job(bob, task_prompt="t", knowledge_bases=[bobs_kb], job_id="x")

    assert WritingJob.objects.filter(job_id="x").count() == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_job_id_make_one_job():
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("carol")
    kb = services.create_knowledge_base(user, name="Notes")

    results = in_threads(
        lambda: jobs.start_outline_job(
            user, task_prompt="t", knowledge_bases=[kb], job_id="race"
        ),
        4,
    )

    assert sum(r.created for r in results) == 1
    assert len({r.job.pk for r in results}) == 1
    assert WritingJob.objects.count() == 1 and TaskRecord.objects.count() == 1


@pytest.mark.parametrize(
    "job_id, field",
    [
        ("outline", "job_id"),
        ("../x", "job_id"),
        ("a b", "job_id"),
        ("x" * 101, "job_id"),
    ],
)
def test_bad_job_ids_name_the_field(alice, kb, job_id, field):
    with pytest.raises(services.InvalidInput, match=f"^{field}: "):
        jobs.start_outline_job(
            alice, task_prompt="t", knowledge_bases=[kb], job_id=job_id
        )
    assert not WritingJob.objects.exists()


def test_the_extractive_outline_comes_from_the_retrieved_passages(alice, kb, library):
    job = succeeded_outline(alice, kb)

    outline = job.outline
    assert outline["title"] == "green tea and black tea"
    headings = [s["heading"] for s in outline["sections"]]
    assert headings[:2] in (["Green tea", "Black tea"], ["Black tea", "Green tea"])
    passages = [p for s in outline["sections"] for p in s["passages"]]
    chunks = {
        c.pk: c for c in Chunk.objects.filter(pk__in=[p["chunk_id"] for p in passages])
    }
    assert len(chunks) == len(passages)
    for p in passages:
        assert chunks[p["chunk_id"]].document_id == p["document_id"]
        assert chunks[p["chunk_id"]].text == p["text"]
    assert job.progress_done == job.progress_total == 2


def test_context_documents_restrict_the_search(alice, kb, library):
    job = jobs.start_outline_job(
        alice, task_prompt="tea rockets", documents=[library[2]], job_id="only"
    ).job

    jobs.generate_outline(job.pk)

    job.refresh_from_db()
    documents = {
        p["document_id"] for s in job.outline["sections"] for p in s["passages"]
    }
    assert documents == {library[2].pk}


def test_an_outline_with_nothing_found_fails_naming_why(alice, kb):
    job = outline_job(alice, kb)  # an empty knowledge base

    with pytest.raises(jobs.JobFailed, match="No passage"):
        jobs.generate_outline(job.pk)


class Scripted(llm.Provider):
    """A provider answering with fixed text (our LLM seam)."""

    name = "openai"

    def __init__(self, *answers):
        self.answers = list(answers)

    def stream(self, messages, *, passages=(), completion, deadline=None):
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        completion.text = answer
        yield answer


def test_a_models_outline_that_is_not_json_fails_the_job_clearly(alice, kb, library):
    job = outline_job(alice, kb)

    with (
        patch.object(llm, "get_provider", return_value=Scripted("Sure! Tea.")),
        pytest.raises(jobs.JobFailed, match="did not give a valid outline: not JSON"),
    ):
        jobs.generate_outline(job.pk)


def test_a_document_from_an_outline_job_cites_real_chunks(alice, kb, library):
    outline = succeeded_outline(alice, kb)
    job = jobs.start_document_job(alice, outline_job=outline, job_id="doc").job
    assert job.sections.count() == len(outline.outline["sections"])

    summary = write_all(job)

    job.refresh_from_db()
    assert summary["status"] == "succeeded" and job.state == State.SUCCEEDED
    assert job.content.startswith(f"# {outline.outline['title']}\n")
    assert "## References" in job.content
    assert job.references, "the extractive sections cite every passage"
    for reference in job.references:
        chunk = Chunk.objects.get(pk=reference["chunk_id"])
        assert chunk.document_id == reference["document_id"]
        assert f"[{reference['n']}]" in job.content
    assert job.result_document is None  # no knowledge base was given
    assert job.progress_done == job.progress_total


def test_the_document_is_added_to_the_knowledge_base_and_vectorized(alice, kb, library):
    outline = succeeded_outline(alice, kb)
    job = jobs.start_document_job(alice, outline_job=outline, knowledge_base=kb).job

    write_all(job)

    job.refresh_from_db()
    document = job.result_document
    assert document.knowledge_base == kb and document.content == job.content
    assert TaskRecord.objects.filter(
        name=services.VECTORIZE, object_id=document.pk
    ).exists()
    # a second finish (a redelivered callback) adds nothing
    again = sections.finish_document(job.pk, celery_id=job.task.celery_id)
    assert again["status"] == State.SUCCEEDED
    assert Document.objects.filter(source__startswith="writing job").count() == 1


def test_an_inline_outline_may_only_cite_the_owners_chunks(alice, bob, kb, library):
    bobs = services.create_knowledge_base(bob, name="Bob's")
    secret = add_ready(bobs, "Secret", "Bob's secret plan.")
    chunk = secret.chunks.get()

    with pytest.raises(jobs.NotOwned, match=f"^outline: no such chunk: {chunk.pk}"):
        jobs.start_document_job(alice, outline=inline_outline([chunk]))
    assert not WritingJob.objects.exists()

    mine = library[0].chunks.get()
    job = jobs.start_document_job(alice, outline=inline_outline([mine])).job
    assert job.outline["sections"][0]["passages"][0]["text"] == mine.text


def test_only_a_succeeded_outline_job_gives_an_outline(alice, kb, library):
    outline_job(alice, kb)

    with pytest.raises(jobs.JobConflict, match="^outline: job 'plan' is pending"):
        jobs.outline_of(alice, "plan")
    chunks = [library[0].chunks.first()]
    document = jobs.start_document_job(alice, outline=inline_outline(chunks)).job
    with pytest.raises(jobs.JobConflict, match="is not an outline job"):
        jobs.outline_of(alice, document.job_id)
    with pytest.raises(WritingJob.DoesNotExist):
        jobs.outline_of(alice, "nope")


def test_a_failed_section_fails_the_job_naming_it(alice, kb, library):
    chunks = [d.chunks.first() for d in library]
    job = jobs.start_document_job(alice, outline=inline_outline(chunks)).job
    assert not job.allow_missing_sections
    provider = Scripted("One [1].", llm.LLMRejected("answered 400: bad"), "Three [1].")

    with (
        patch.object(llm, "get_provider", return_value=provider),
        pytest.raises(jobs.JobFailed) as failed,
    ):
        write_all(job)

    job.refresh_from_db()
    assert str(failed.value) == (
        "1 of 3 sections failed: section 2 'Part 2': LLMRejected: answered 400: bad"
    )
    assert (job.state, job.error) == (State.FAILED, str(failed.value))
    assert job.content == "" and job.result_document is None


@override_settings(JOBS_ALLOW_MISSING_SECTIONS=True)
def test_with_missing_sections_allowed_the_job_completes_marking_it(alice, kb, library):
    chunks = [d.chunks.first() for d in library]
    job = jobs.start_document_job(alice, outline=inline_outline(chunks)).job
    assert job.allow_missing_sections  # the setting is the default
    provider = Scripted("One [1].", llm.LLMRejected("answered 400: bad"), "Three [1].")

    with patch.object(llm, "get_provider", return_value=provider):
        summary = write_all(job)

    job.refresh_from_db()
    assert job.state == State.SUCCEEDED and summary["missing"] == [1]
    assert job.missing_sections == [1]
    assert "## Part 2\n\n*This section is missing: LLMRejected" in job.content
    assert [r["chunk_id"] for r in job.references] == [chunks[0].pk, chunks[2].pk]
    assert "One [1]." in job.content and "Three [2]." in job.content


def test_a_transient_error_leaves_the_section_for_a_retry(alice, kb, library):
    job = jobs.start_document_job(
        alice, outline=inline_outline([library[0].chunks.first()])
    ).job
    sections.plan_sections(job.pk)
    unavailable = Scripted(llm.LLMUnavailable("answered 503"))

    with (
        patch.object(llm, "get_provider", return_value=unavailable),
        pytest.raises(llm.LLMUnavailable),
    ):
        sections.write_section(job.pk, 0, final_attempt=False)

    section = job.sections.get()
    assert (section.status, section.error) == (
        Status.PENDING,
        "will retry: answered 503",
    )
    with patch.object(
        llm, "get_provider", return_value=Scripted(llm.LLMUnavailable("503"))
    ):
        outcome = sections.write_section(job.pk, 0, final_attempt=True)
    assert outcome["status"] == "failed"


def test_a_broken_chord_fails_the_open_sections_and_ends_the_record(alice, kb, library):
    # a member failed outright: its section was left writing and its record FAILURE
    job = jobs.start_document_job(
        alice, outline=inline_outline([d.chunks.first() for d in library[:2]])
    ).job
    sections.plan_sections(job.pk)
    sections.write_section(job.pk, 0, final_attempt=True)
    sections.claim_section(job.pk, 1)
    from tasks_app import services as ledger

    ledger.mark_started(job.task.celery_id, name=jobs.DOCUMENT_TASK, worker="w@h")
    member = TaskRecord.objects.create(
        name=jobs.SECTION_TASK,
        args=[job.pk, 1],
        celery_id="member-1",
        state="FAILURE",
        error="Stopped after 4 deliveries",
        content_type=job.task.content_type,
        object_id=job.pk,
    )

    sections.chord_broken(
        job.pk, celery_id=job.task.celery_id, error="Dependency raised"
    )

    job.refresh_from_db()
    assert job.state == State.FAILED
    assert (
        "section 2 'Part 2': Its task failed: Stopped after 4 deliveries" in job.error
    )
    job.task.refresh_from_db()
    assert job.task.state == "FAILURE" and "section 2" in job.task.error
    assert member.pk  # the record the error came from
    # a stale errback (of an earlier attempt of the job's task) changes nothing
    sections.chord_broken(job.pk, celery_id="old-attempt", error="x")


def test_cancel_cancels_the_job_its_sections_and_every_task(alice, kb, library):
    job = jobs.start_document_job(
        alice, outline=inline_outline([d.chunks.first() for d in library])
    ).job

    cancelled = jobs.cancel_job(job)

    assert cancelled.state == State.CANCELLED
    assert set(job.sections.values_list("status", flat=True)) == {Status.CANCELLED}
    assert job.task.__class__.objects.get(pk=job.task_id).state == "REVOKED"
    with pytest.raises(jobs.JobFinished):
        jobs.cancel_job(cancelled)
    # a section task published after the cancel skips
    assert sections.write_section(job.pk, 0, final_attempt=True)["status"] == "skipped"


def test_a_transient_outline_error_retries_after_a_fractional_backoff(settings):
    # AI_RETRY_BACKOFF may be under a second; Celery's retry_backoff cannot be
    settings.AI_RETRY_BACKOFF, settings.AI_RETRY_BACKOFF_MAX = 0.5, 4
    task = tasks.generate_outline_from_query_task
    down = llm.LLMUnavailable("Provider answered 429")
    task.push_request(retries=2)
    try:
        with (
            patch.object(jobs, "generate_outline", side_effect=down),
            patch.object(task, "retry", side_effect=Retry) as retry,
            pytest.raises(Retry),
        ):
            task.run(1)
    finally:
        task.pop_request()

    assert retry.call_args.kwargs["exc"] is down
    assert (
        1.0 <= retry.call_args.kwargs["countdown"] <= 2.0
    )  # half to all of 0.5 * 2**2
