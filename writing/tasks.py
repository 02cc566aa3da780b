"""Thin task wrappers around writing.jobs and writing.sections.

The tasks keep the names they had when writing jobs lived in the knowledge app
(knowledge.generate_outline_from_query, knowledge.write_section, ...): stored
task records are retried by name, messages in flight name them, and the routes
send knowledge.* to knowledge_default.
"""

from __future__ import annotations

from django.conf import settings

from claw.celery import app
from claw.services import LLMUnavailable
from knowledge.services import EmbeddingUnavailable
from tasks_app import fanout, retries
from tasks_app import services as ledger
from tasks_app.progress import TaskCancelled, report_progress
from writing import jobs, sections
from writing.models import WritingJob, WritingSection

Status = WritingSection.Status
FAN_OUT = fanout.parent_options(
    soft_time_limit=settings.JOBS_DOCUMENT_SOFT_TIME_LIMIT,
    time_limit=settings.JOBS_DOCUMENT_TIME_LIMIT,
)


def backoff(failures: int) -> float:
    # the AI providers' backoff, as for replies
    return retries.backoff(
        failures, base=settings.AI_RETRY_BACKOFF, maximum=settings.AI_RETRY_BACKOFF_MAX
    )


@app.task(
    name=jobs.OUTLINE_TASK,
    bind=True,
    max_retries=3,
    soft_time_limit=settings.JOBS_OUTLINE_SOFT_TIME_LIMIT,
    time_limit=settings.JOBS_OUTLINE_TIME_LIMIT,
)
def generate_outline_from_query_task(self, job_pk: int) -> dict:
    """Search the job's knowledge bases and store an outline (jobs.generate_outline).

    Transient provider errors retry with backoff (a lost database is waited
    for, see tasks_app.retries); anything else,
    and the last retry, fails the job (sections.job_task_ended). The countdown comes
    from tasks_app.retries.backoff, as for replies and sections: Celery's retry_backoff
    needs whole seconds (random.randrange), and AI_RETRY_BACKOFF may be 0.5.
    """
    try:
        return jobs.generate_outline(job_pk)
    except (LLMUnavailable, EmbeddingUnavailable) as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from None


@app.task(name=jobs.DOCUMENT_TASK, bind=True, **FAN_OUT)
def generate_document_from_outline_task(
    self, job_pk: int, queue: str | None = None
) -> dict:
    """Write a document job's sections in parallel, then merge them.

    The task replaces itself (Task.replace) with a chord of knowledge.write_section
    members and the callback knowledge.finish_document, which runs under this
    task's id: the record stays STARTED with the sections' progress, and ends
    with the merge. Members never raise for a failed section; if one fails
    outright anyway (refused as poisoned or cancelled, killed at its hard time
    limit) Celery breaks the chord and the errback ends the job instead of
    leaving it waiting. A re-run (the health check re-queued a job whose chord
    never called back) writes only the sections not done, or merges at once.
    queue: where the sections and the merge run (default: the routes'
    knowledge_default).
    """
    try:
        plan = sections.plan_sections(job_pk)
        if plan is None:
            return {"job": job_pk, "status": "skipped"}
        if not plan.positions:
            return sections.finish_document(job_pk, celery_id=self.request.id)
        todo = len(plan.positions)
        report_progress(plan.total - todo, plan.total, f"writing {todo} sections")
    except TaskCancelled:
        jobs.cancelled_by_task(job_pk)
        raise
    route = {"queue": queue} if queue else {}
    target = ledger.target_header(WritingJob(pk=job_pk))
    members = [
        write_section_task.si(job_pk, position).set(headers=target, **route)
        for position in plan.positions
    ]
    callback = fanout.chord_callback(
        finish_document_task.s(job_pk=job_pk).set(**route), document_broken_task
    )
    return fanout.replace_with_chord(self, members, callback)


@app.task(
    name=jobs.SECTION_TASK,
    bind=True,
    max_retries=3,
    soft_time_limit=settings.JOBS_SECTION_SOFT_TIME_LIMIT,
    time_limit=settings.JOBS_SECTION_TIME_LIMIT,
)
def write_section_task(self, job_pk: int, position: int) -> dict:
    """Write one section (sections.write_section); a transient provider error
    retries with backoff (the retry stays in the chord), the last one fails the
    section. A run outside the chord finishes the job when it is the last."""
    final = self.request.retries >= self.max_retries
    try:
        outcome = sections.write_section(job_pk, position, final_attempt=final)
    except LLMUnavailable as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from None
    if not self.request.chord:
        sections.finish_alone(job_pk)
    return outcome


@app.task(name=jobs.FINISH_TASK, bind=True)
def finish_document_task(self, outcomes: list[dict], *, job_pk: int) -> dict:
    return sections.finish_document(job_pk, celery_id=self.request.id)


# Ends a document job whose chord broke (sections.chord_broken).
document_broken_task = fanout.errback_task(
    "knowledge.document_chord_broken",
    lambda parent, kwargs, error: sections.chord_broken(
        kwargs.get("job_pk"), celery_id=parent, error=error
    ),
)
