"""Writing a document job: its sections, in parallel, and finishing it.

knowledge.generate_document_from_outline replaces itself with a chord of
knowledge.write_section, one per section, and the callback
knowledge.finish_document; these are their bodies, and what ends a job whose
sections stopped outside them (refused, revoked, re-queued alone, a broken
chord). A section is rewritten from empty on every run, and a job is finished
once (a conditional UPDATE on its state, under a row lock). The rest of a job's
life (submitting, the outline, cancelling, reading) is writing.jobs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from django.db import transaction
from django.utils import timezone

from claw import services as llm  # the AI providers, as conversations offer them
from knowledge import services
from knowledge.services import Chunk, KnowledgeBase
from tasks_app import fanout
from tasks_app.base import POISONED
from tasks_app.lifecycle import Ended
from tasks_app.models import TaskState
from tasks_app.progress import TaskCancelled, report_progress
from writing import jobs, outlines
from writing.jobs import SECTION_TASK
from writing.models import WritingJob, WritingSection

logger = logging.getLogger(__name__)
State = WritingJob.State
Status = WritingSection.Status


# --- sections ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    positions: list[int]  # sections to write
    total: int


def plan_sections(job_pk: int) -> Plan | None:
    """Begin a document job and pick the sections to write: every section not
    done (on a re-run after the health check re-queued the job, the rest are
    kept). None if the job is gone or ended."""
    jobs.ensure_owned(job_pk)
    job = jobs.begin_job(job_pk)
    if job is None:
        return None
    sections = WritingSection.objects.filter(job_id=job_pk)
    todo = list(
        sections.exclude(status=Status.DONE)
        .order_by("position")
        .values_list("position", flat=True)
    )
    sections.filter(position__in=todo).update(status=Status.PENDING, error="")
    return Plan(todo, sections.count())


def claim_section(job_pk: int, position: int) -> WritingSection | None:
    """The section, now being written from empty; None if it is done, or its job
    ended or its task was cancelled (the chord's other members skip then too)."""
    running = WritingJob.objects.filter(
        pk=job_pk, state=State.RUNNING, task__cancel_requested=False
    )
    updated = (
        WritingSection.objects.filter(job_id=job_pk, position=position, job__in=running)
        .exclude(status=Status.DONE)
        .update(
            status=Status.WRITING,
            content="",
            error="",
            started_at=timezone.now(),
            finished_at=None,
        )
    )
    if not updated:
        return None
    return WritingSection.objects.select_related("job").get(
        job_id=job_pk, position=position
    )


def end_section(section: WritingSection, status: str, **fields) -> bool:
    """Store a section's outcome (if it is still being written or waiting) and
    count it in the job's progress."""
    updated = WritingSection.objects.filter(
        pk=section.pk, status__in=(Status.PENDING, Status.WRITING)
    ).update(status=status, finished_at=timezone.now(), **fields)
    report_sections(section.job_id)
    return bool(updated)


def report_sections(job_pk: int) -> None:
    """Sections finished of total, on the job and on its task's record (one
    progress event per finished section)."""
    statuses = list(
        WritingSection.objects.filter(job_id=job_pk).values_list("status", flat=True)
    )
    finished = sum(1 for s in statuses if s in WritingSection.FINAL_STATUSES)
    failed = sum(1 for s in statuses if s in (Status.FAILED, Status.CANCELLED))
    WritingJob.objects.filter(pk=job_pk, state=State.RUNNING).update(
        progress_done=finished
    )
    celery_id = (
        WritingJob.objects.filter(pk=job_pk).values_list("task__celery_id", flat=True)
    ).first()
    if celery_id:
        note = f" ({failed} failed)" if failed else ""
        fanout.report_parent(
            celery_id,
            finished,
            len(statuses),
            f"{finished} of {len(statuses)} sections finished{note}",
        )


def write_section(job_pk: int, position: int, *, final_attempt: bool) -> dict:
    """The body of knowledge.write_section: one section, rewritten from empty.

    A section that cannot be written is marked failed and returned as the
    outcome, never raised: a raising member fails the chord before its callback
    can say which section failed. The exceptions: a transient provider error
    propagates for the task to retry (except on its final attempt), and a cancel
    stops it (the section is marked cancelled).
    """
    jobs.ensure_owned(job_pk)
    section = claim_section(job_pk, position)
    if section is None:
        return {"position": position, "status": "skipped"}
    try:
        report_progress(0, 1, f"writing section {position + 1}")  # cancel check
        text = compose_section(section)
    except TaskCancelled:
        end_section(section, Status.CANCELLED, error="Cancelled.")
        raise
    except llm.LLMUnavailable as exc:
        if not final_attempt:
            WritingSection.objects.filter(pk=section.pk).update(
                status=Status.PENDING, error=f"will retry: {exc}"
            )
            raise
        return _section_failed(section, f"{type(exc).__name__}: {exc}")
    except SoftTimeLimitExceeded:
        return _section_failed(section, "timed out (soft time limit)")
    except Exception as exc:
        return _section_failed(section, f"{type(exc).__name__}: {exc}".rstrip(": "))
    end_section(section, Status.DONE, content=text)
    return {"position": position, "status": "done", "characters": len(text)}


def compose_section(section: WritingSection) -> str:
    outline = {
        "heading": section.heading,
        "key_points": section.key_points,
        "passages": section.passages,
    }
    provider = llm.get_provider()
    if provider.name == llm.ExtractiveProvider.name:
        return outlines.extractive_section(outline)
    messages = outlines.section_messages(section.job.title, outline)
    text = jobs.complete(provider, messages, section.passages, step=0, total=1)
    text = text.replace("\x00", "")  # PostgreSQL cannot store it
    if not text.strip():
        raise llm.LLMRejected("the provider wrote nothing")
    return text


def _section_failed(section: WritingSection, error: str) -> dict:
    logger.warning(
        "Section %s of job %s failed: %s", section.position, section.job_id, error
    )
    end_section(section, Status.FAILED, error=error[:5000])
    return {"position": section.position, "status": "failed", "error": error[:500]}


def section_stopped(
    job_pk: int, position: int, *, status: str, error: str, alone: bool
) -> None:
    """A section's run ended outside its body: refused by the ledger (cancelled,
    or its worker process died every time) or failed with an error the body did
    not catch. alone: the run is outside the chord (the health check re-queued
    it), so no callback will finish the job: it is finished here when complete."""
    section = WritingSection.objects.filter(job_id=job_pk, position=position).first()
    if section is None:
        return
    end_section(section, status, error=error[:5000])
    if alone:
        finish_alone(job_pk)


def job_task_ended(ended: Ended) -> None:
    """The lifecycle handler of a job's task (FAILURE, REVOKED), for runs that end
    outside the body: cancelled (through the task API or admin, not the job's
    own cancel; refused, terminated or stopped), refused as poisoned, or failed
    after its retries."""
    record = ended.record
    job_pk = record.kwargs.get("job_pk", record.args[0] if record.args else None)
    if job_pk is None:
        return
    jobs.ensure_owned(job_pk, celery_id=record.celery_id)  # args may be edited
    if ended.state == TaskState.REVOKED:
        jobs.cancelled_by_task(job_pk)
    elif ended.refusal == "poisoned":
        jobs.fail_job(job_pk, error=f"Its task was {POISONED}.")
    elif isinstance(ended.exc, jobs.JobFailed):
        jobs.fail_job(job_pk, error=str(ended.exc))
    else:
        jobs.fail_job(job_pk, error=ended.error.rstrip(": "))


def section_task_ended(ended: Ended) -> None:
    """The lifecycle handler of a section's task (FAILURE, REVOKED): the section
    ends cancelled or failed (the body returns its own failures as outcomes;
    this is what escaped it, such as a database error). A run outside the chord
    (re-queued by the health check) finishes the job when it is the last."""
    args = ended.record.args
    if len(args) < 2:
        return
    jobs.ensure_owned(args[0], celery_id=ended.record.celery_id)  # args may be edited
    if ended.state == TaskState.REVOKED:
        status, error = Status.CANCELLED, "Cancelled."
    elif ended.refusal == "poisoned":
        status, error = Status.FAILED, f"Its task was {POISONED}."
    else:
        status, error = Status.FAILED, ended.error
    # Where the process that ended it did not know (a cancel while queued), a
    # record published as a chord member has its group.
    in_chord = (
        ended.in_chord if ended.in_chord is not None else bool(ended.record.group_id)
    )
    section_stopped(args[0], args[1], status=status, error=error, alone=not in_chord)


def finish_alone(job_pk: int) -> None:
    """After a section's run outside the chord (the health check re-queued its
    LOST record; the ledger publishes the new attempt alone, so no callback
    counts it): finish the job if every section has ended."""
    celery_id = (
        WritingJob.objects.filter(pk=job_pk, state=State.RUNNING)
        .values_list("task__celery_id", flat=True)
        .first()
    )
    if celery_id:
        finish_waiting(job_pk, celery_id=celery_id)


# --- finishing -------------------------------------------------------------------


def section_errors(sections: list[WritingSection], limit: int = 20) -> str:
    named = [
        f"section {s.position + 1} {s.heading!r}: "
        + outlines.shorten(s.error or s.status, 300)
        for s in sections[:limit]
    ]
    more = len(sections) - limit
    return "; ".join(named) + (f"; and {more} more" if more > 0 else "")


def finish_document(job_pk: int, *, celery_id: str) -> dict:
    """Merge the sections into the document: the body of the chord's callback.

    1. Nothing to do for a job that ended (cancelled, or finished by another
       run), a call from a stale attempt (celery_id is not the job task's current
       one) or while a section is still open.
    2. Failed sections fail the job with a summary naming them (jobs.JobFailed), unless
       the job allows missing sections and one section at least was written.
    3. The document is merged, its references checked against the chunks as they
       are now, and stored on the job (and added to the target knowledge base, to
       be vectorized) in one transaction that locks the job row, so two finishing
       runs cannot both add it.
    """
    jobs.ensure_owned(job_pk, celery_id=celery_id)
    job = WritingJob.objects.select_related("task").filter(pk=job_pk).first()
    if job is None or job.state != State.RUNNING:
        return {"job": job_pk, "status": job.state if job else "missing"}
    if job.task is None or job.task.celery_id != celery_id:
        return {"job": job.job_id, "status": "stale"}
    sections = list(job.sections.order_by("position"))
    if any(s.status not in WritingSection.FINAL_STATUSES for s in sections):
        return {"job": job.job_id, "status": "waiting"}
    failed = [s for s in sections if s.status != Status.DONE]
    if failed and (not job.allow_missing_sections or len(failed) == len(sections)):
        summary = (
            f"{len(failed)} of {len(sections)} sections failed: "
            f"{section_errors(failed)}"
        )
        jobs.fail_job(job_pk, error=summary)
        raise jobs.JobFailed(summary)
    merged = outlines.merge(
        job.title,
        [
            outlines.WrittenSection(
                s.heading,
                s.passages,
                s.content,
                "" if s.status == Status.DONE else (s.error or s.status),
            )
            for s in sections
        ],
    )
    return _store_document(job, merged)


def _current(references: list[dict]) -> list[dict]:
    """References with chunk_id null where the chunk is gone (its document was
    re-vectorized or deleted since the outline); document and text stay."""
    alive = set(
        Chunk.objects.filter(pk__in=[r["chunk_id"] for r in references]).values_list(
            "id", flat=True
        )
    )
    return [
        r if r["chunk_id"] in alive else {**r, "chunk_id": None} for r in references
    ]


def _store_document(job: WritingJob, merged: outlines.Merged) -> dict:
    references = _current(merged.references)
    with transaction.atomic():
        if (
            not WritingJob.objects.select_for_update()
            .filter(pk=job.pk, state=State.RUNNING)
            .exists()
        ):
            return {"job": job.job_id, "status": "ended meanwhile"}
        document = None
        kb = KnowledgeBase.objects.filter(pk=job.target_knowledge_base_id).first()
        if kb is not None:
            document = services.add_document(
                kb,
                title=job.title[:300],
                content=merged.content,
                source=f"writing job {job.job_id}"[:500],
                owner=job.owner,
            )
        WritingJob.objects.filter(pk=job.pk).update(
            state=State.SUCCEEDED,
            content=merged.content,
            references=references,
            missing_sections=merged.missing,
            result_document=document,
            progress_done=job.progress_total,
            error="",
            finished_at=timezone.now(),
        )
    return {
        "job": job.job_id,
        "status": "succeeded",
        "sections": len(job.outline["sections"]),
        "missing": merged.missing,
        "references": len(references),
        "document": document.pk if document else None,
    }


def finish_waiting(job_pk: int, *, celery_id: str, broken: str = "") -> None:
    """Finish the job where the chord's callback will not run, and end its
    task's record, which waits STARTED for that callback, with the job's outcome
    (a job still waiting for a section is left alone)."""
    try:
        outcome = finish_document(job_pk, celery_id=celery_id)
    except jobs.JobFailed as exc:
        fanout.end_parent(celery_id, error=f"jobs.JobFailed: {exc}")
        return
    if outcome["status"] == "succeeded":
        fanout.end_parent(celery_id)
    elif broken and outcome["status"] != "stale":
        # ended otherwise (cancelled): FAILURE, or REVOKED when it was cancelled
        fanout.end_parent(celery_id, error=f"Chord broken: {broken}")


def chord_broken(job_pk: int, *, celery_id: str, error: str) -> None:
    """End a document job whose chord broke: a member failed outright (refused as
    poisoned or cancelled, killed at its hard time limit), so Celery fails the
    callback without running it. Sections left open are the failed ones (every
    member has reported when the chord breaks); the job then finishes as usual,
    and its task's record, which waited for the callback, ends with it."""
    jobs.ensure_owned(job_pk, celery_id=celery_id)
    job = WritingJob.objects.select_related("task").filter(pk=job_pk).first()
    if job is None or job.task is None or job.task.celery_id != celery_id:
        return  # gone, or a stale chord of an attempt that was re-queued
    if job.state == State.RUNNING:
        errors = member_errors(job)
        for section in job.sections.filter(status__in=(Status.PENDING, Status.WRITING)):
            reason = errors.get(section.position) or error
            end_section(section, Status.FAILED, error=f"Its task failed: {reason}")
    finish_waiting(job_pk, celery_id=celery_id, broken=error)


def member_errors(job: WritingJob) -> dict[int, str]:
    """The error of each section's task record that failed, by position."""
    records = jobs.job_records(job).filter(name=SECTION_TASK).exclude(error="")
    return {jobs.section_position(r): r.error for r in records.only("args", "error")}
