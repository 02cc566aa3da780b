"""Thin task wrappers around writing.jobs and writing.sections.

The tasks keep the names they had when writing jobs lived in the knowledge app
(knowledge.generate_outline_from_query, knowledge.write_section, ...): stored
task records are retried by name, messages in flight name them, and the routes
send knowledge.* to knowledge_default.
"""

from __future__ import annotations

from celery import chord
from celery.exceptions import ChordError
from django.conf import settings

from claw.celery import app
from claw.services import LLMUnavailable
from knowledge.services import EmbeddingUnavailable
from tasks_app import fanout, retries
from tasks_app import services as ledger
from tasks_app.base import POISONED, LedgerTask
from tasks_app.progress import TaskCancelled, report_progress
from tasks_app.retries import DATABASE_ERRORS
from writing import jobs, sections
from writing.models import WritingJob, WritingSection

Status = WritingSection.Status
# Its database-error retries back off as the knowledge tasks' (README).
FAN_OUT = fanout.parent_options(retry_backoff=settings.KNOWLEDGE_RETRY_BACKOFF)


def backoff(failures: int) -> float:
    # the AI providers' backoff, as for replies
    return retries.backoff(
        failures, base=settings.AI_RETRY_BACKOFF, maximum=settings.AI_RETRY_BACKOFF_MAX
    )


def _job_pk(args, kwargs) -> int:
    # the chord's callback gets the members' outcomes first and the job as a kwarg
    return kwargs["job_pk"] if "job_pk" in kwargs else args[0]


class JobTask(LedgerTask):
    """Keeps a writing job in step with runs of its task that end outside the
    body: refused by the ledger, or failed (after its retries)."""

    def before_start(self, task_id, args, kwargs):
        refusal = getattr(self.request, "claw_refusal", None)
        if refusal == "cancelled":  # through the task API or admin, not the job's
            jobs.cancelled_by_task(_job_pk(args, kwargs))
        elif refusal == "poisoned":
            jobs.fail_job(_job_pk(args, kwargs), error=f"Its task was {POISONED}.")
        super().before_start(task_id, args, kwargs)

    def before_retry(self, record) -> None:
        # tasks_app.services.retry: reopen the failed job for the new attempt
        jobs.reopen_for_retry(_job_pk(record.args, record.kwargs), record)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        if isinstance(exc, jobs.JobFailed):
            error = str(exc)
        else:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        jobs.fail_job(_job_pk(args, kwargs), error=error)


class SectionTask(LedgerTask):
    """Keeps a section in step with runs that end outside the body. A run
    outside a chord (re-queued by the health check: the ledger publishes it
    alone) finishes the job itself when it is the last section to end."""

    def before_start(self, task_id, args, kwargs):
        refusal = getattr(self.request, "claw_refusal", None)
        if refusal == "cancelled":
            self._stopped(args, Status.CANCELLED, "Cancelled.")
        elif refusal == "poisoned":
            self._stopped(args, Status.FAILED, f"Its task was {POISONED}.")
        super().before_start(task_id, args, kwargs)

    def before_retry(self, record) -> None:
        # tasks_app.services.retry: refused, the job's retry reruns its sections
        raise jobs.section_not_retryable(record.args[0], record.args[1], record)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        # The body returns failures as outcomes; this is what escaped it (such
        # as a database error).
        self._stopped(args, Status.FAILED, f"{type(exc).__name__}: {exc}")

    def _stopped(self, args, status: str, error: str) -> None:
        job_pk, position = args[0], args[1]
        sections.section_stopped(
            job_pk, position, status=status, error=error, alone=not self.request.chord
        )


@app.task(
    name=jobs.OUTLINE_TASK,
    bind=True,
    base=JobTask,
    max_retries=3,
    soft_time_limit=120,
    time_limit=180,
)
def generate_outline_from_query_task(self, job_pk: int) -> dict:
    """Search the job's knowledge bases and store an outline (jobs.generate_outline).

    Transient provider and database errors retry with backoff; anything else,
    and the last retry, fails the job (JobTask.on_failure). The countdown comes
    from tasks_app.retries.backoff, as for replies and sections: Celery's retry_backoff
    needs whole seconds (random.randrange), and AI_RETRY_BACKOFF may be 0.5.
    """
    try:
        return jobs.generate_outline(job_pk)
    except (LLMUnavailable, EmbeddingUnavailable, *DATABASE_ERRORS) as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from None


@app.task(name=jobs.DOCUMENT_TASK, bind=True, base=JobTask, **FAN_OUT)
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
    callback = finish_document_task.s(job_pk=job_pk).set(**route)
    callback.link_error(document_broken_task.s())
    return self.replace(chord(members, callback))


@app.task(
    name=jobs.SECTION_TASK,
    bind=True,
    base=SectionTask,
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


@app.task(name=jobs.FINISH_TASK, bind=True, base=JobTask)
def finish_document_task(self, outcomes: list[dict], *, job_pk: int) -> dict:
    return sections.finish_document(job_pk, celery_id=self.request.id)


@app.task(name="knowledge.document_chord_broken")
def document_broken_task(request, exc, traceback) -> None:
    # As update_broken_task: called directly with the callback's request where
    # the chord broke. A callback that ran and raised is handled by JobTask.
    if isinstance(exc, ChordError):
        job_pk = (getattr(request, "kwargs", None) or {}).get("job_pk")
        sections.chord_broken(job_pk, celery_id=request.id, error=str(exc))
