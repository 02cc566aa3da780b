"""The only writer of writing jobs and their sections: API, admin and the job
tasks all come through here.

An outline job runs knowledge.generate_outline_from_query: search its knowledge
bases with the task prompt, then build an outline from the passages. A document
job runs knowledge.generate_document_from_outline, which replaces itself with a
chord: one knowledge.write_section per section, in parallel, and the callback
knowledge.finish_document, which merges the sections under the job task's own
id. Every step is idempotent: a section is rewritten from empty on every run,
and a job is finished once (a conditional UPDATE on its state, under a row lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from claw import llm
from knowledge import search, services, writing
from knowledge.embeddings import EmbeddingError, EmbeddingUnavailable
from knowledge.models import Chunk, KnowledgeBase, WritingJob, WritingSection
from tasks_app import services as ledger
from tasks_app.models import TaskEvent, TaskRecord
from tasks_app.progress import TaskCancelled, report_progress

logger = logging.getLogger(__name__)

OUTLINE_TASK = "knowledge.generate_outline_from_query"
DOCUMENT_TASK = "knowledge.generate_document_from_outline"
SECTION_TASK = "knowledge.write_section"
FINISH_TASK = "knowledge.finish_document"
TASK_NAMES = {
    WritingJob.Kind.OUTLINE: OUTLINE_TASK,
    WritingJob.Kind.DOCUMENT: DOCUMENT_TASK,
}
RESERVED_JOB_IDS = ("outline", "document")  # the submission URLs /jobs/<these>/
# Starts with a letter or digit, so "." and ".." never name a job in a URL.
URL_JOB_ID = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}"
JOB_ID_PATTERN = rf"^(?!(?:{'|'.join(RESERVED_JOB_IDS)})$){URL_JOB_ID}$"
State = WritingJob.State
Status = WritingSection.Status
InvalidInput = services.InvalidInput


class JobConflict(Exception):
    """The job_id or Idempotency-Key names a job of a different request, or the
    outline job is not ready (API: 409). The message names the field."""


class JobFinished(Exception):
    """The job already ended; it cannot be cancelled (API: 409)."""


class NotOwned(LookupError):
    """An id names nothing of the owner's (API: 404); the message names the field."""


class JobFailed(Exception):
    """A job ended in failure; raised by its task so the record ends FAILURE with
    the summary."""


@dataclass(frozen=True)
class Started:
    job: WritingJob
    created: bool


# --- submitting --------------------------------------------------------------


def fingerprint(payload: dict) -> str:
    return hashlib.sha256(
        json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()


def check_job_id(job_id: str | None) -> str:
    """The client's job_id, or a new one; InvalidInput naming job_id if bad."""
    if job_id is None:
        return uuid.uuid4().hex
    if job_id in RESERVED_JOB_IDS:
        raise InvalidInput(f"job_id: {job_id!r} is reserved")
    if not isinstance(job_id, str) or not re.fullmatch(JOB_ID_PATTERN, job_id):
        raise InvalidInput(
            "job_id: must be 1 to 100 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit"
        )
    return job_id


def existing_job(owner, job_id: str, request_hash: str) -> WritingJob | None:
    """The owner's job with this job_id; JobConflict if it was for another request."""
    job = WritingJob.objects.filter(owner=owner, job_id=job_id).first()
    if job is not None and job.request_hash != request_hash:
        raise JobConflict(
            f"job_id: {job_id!r} is already the id of another {job.kind} job "
            "with different parameters"
        )
    return job


def replayed_job(record: TaskRecord, request_hash: str, job_id: str | None):
    """The job an Idempotency-Key created (its task is record); JobConflict if the
    key was first used for a different request."""
    job = WritingJob.objects.filter(task=record).first()
    if (
        job is None
        or job.request_hash != request_hash
        or (job_id is not None and job.job_id != job_id)
    ):
        raise JobConflict("Idempotency-Key: already used for a different request")
    return job


def _start(owner, *, kind, job_id, request_hash, fields, fill, idempotency_key, queue):
    """Create the job and submit its task in one transaction, or find the job
    this job_id (or the Idempotency-Key) already names. Another request may
    create it concurrently: its INSERT waits on the unique (owner, job_id)
    index, then fails, and the job it made is returned."""
    if idempotency_key:
        previous = TaskRecord.objects.filter(
            owner=owner, idempotency_key=idempotency_key
        ).first()
        if previous is not None:
            return Started(replayed_job(previous, request_hash, job_id), False)
    job_id = check_job_id(job_id)
    with transaction.atomic():
        found = existing_job(owner, job_id, request_hash)
        if found is not None:
            return Started(found, created=False)
        try:
            with transaction.atomic():
                job = WritingJob.objects.create(
                    owner=owner,
                    job_id=job_id,
                    kind=kind,
                    request_hash=request_hash,
                    **fields,
                )
        except IntegrityError:
            return Started(existing_job(owner, job_id, request_hash), created=False)
        fill(job)
        # a document job's sections and merge follow its task to its queue
        fan_out = queue and kind == WritingJob.Kind.DOCUMENT
        job.task = ledger.submit(
            TASK_NAMES[kind],
            args=[job.pk],
            kwargs={"queue": queue} if fan_out else {},
            owner=owner,
            target=job,
            queue=queue,
            idempotency_key=idempotency_key,
        )
        job.save(update_fields=["task", "updated_at"])
    return Started(job, created=True)


def outline_request(task_prompt, knowledge_bases, documents) -> dict:
    return {
        "kind": WritingJob.Kind.OUTLINE,
        "task_prompt": task_prompt,
        "knowledge_bases": sorted(kb.pk for kb in knowledge_bases),
        "documents": sorted(document.pk for document in documents),
    }


def start_outline_job(
    owner,
    *,
    task_prompt: str,
    knowledge_bases=(),
    documents=(),
    job_id: str | None = None,
    idempotency_key: str | None = None,
    queue: str | None = None,
) -> Started:
    """An outline job over whole knowledge bases and/or some documents, with its
    task submitted after commit (services.submit); or the job job_id names."""
    if not task_prompt or not task_prompt.strip(services.BLANK):
        raise InvalidInput("task_prompt: must not be blank")
    if not knowledge_bases and not documents:
        raise InvalidInput(
            "knowledge_base_ids: give knowledge bases or context documents to search"
        )

    def fill(job: WritingJob) -> None:
        job.knowledge_bases.set(knowledge_bases)
        job.context_documents.set(documents)

    return _start(
        owner,
        kind=WritingJob.Kind.OUTLINE,
        job_id=job_id,
        request_hash=fingerprint(
            outline_request(task_prompt, knowledge_bases, documents)
        ),
        fields={"task_prompt": task_prompt, "progress_total": 2},
        fill=fill,
        idempotency_key=idempotency_key,
        queue=queue,
    )


def outline_of(owner, outline_job_id: str) -> WritingJob:
    """The owner's succeeded outline job; JobConflict naming outline if it is
    not one, or not finished yet (WritingJob.DoesNotExist if there is none)."""
    job = WritingJob.objects.get(owner=owner, job_id=outline_job_id)
    if job.kind != WritingJob.Kind.OUTLINE:
        raise JobConflict(f"outline: job {outline_job_id!r} is not an outline job")
    if job.state != State.SUCCEEDED:
        raise JobConflict(
            f"outline: job {outline_job_id!r} is {job.state}; it has no outline "
            "until it succeeds"
        )
    return job


def document_request(outline, outline_job, knowledge_base, allow_missing) -> dict:
    return {
        "kind": WritingJob.Kind.DOCUMENT,
        "outline": outline if outline_job is None else None,
        "outline_job": outline_job.job_id if outline_job is not None else None,
        "knowledge_base": knowledge_base.pk if knowledge_base else None,
        "allow_missing_sections": allow_missing,
    }


def start_document_job(
    owner,
    *,
    outline: dict | None = None,
    outline_job: WritingJob | None = None,
    knowledge_base: KnowledgeBase | None = None,
    allow_missing_sections: bool | None = None,
    job_id: str | None = None,
    idempotency_key: str | None = None,
    queue: str | None = None,
) -> Started:
    """A document job with one section row per outline section, its task
    submitted after commit; or the job job_id names.

    outline: {"title", "sections": [{"heading", "key_points", "passages":
    [{"chunk_id"}]}]}, its passages the owner's chunks (NotOwned otherwise); or
    None with outline_job, a succeeded outline job (outline_of).
    allow_missing_sections defaults to JOBS_ALLOW_MISSING_SECTIONS and is fixed
    for the job, whichever worker merges it.
    """
    if (outline is None) == (outline_job is None):
        raise InvalidInput("outline: give an outline or the job_id of an outline job")
    if allow_missing_sections is None:
        allow_missing_sections = settings.JOBS_ALLOW_MISSING_SECTIONS
    request = document_request(
        outline, outline_job, knowledge_base, allow_missing_sections
    )
    if job_id is not None:
        # A repeat finds its job even if a cited chunk is gone since.
        found = existing_job(owner, check_job_id(job_id), fingerprint(request))
        if found is not None:
            return Started(found, created=False)
    if outline_job is not None:
        source = outline_job.outline
    else:
        source = resolve_passages(owner, outline)

    def fill(job: WritingJob) -> None:
        WritingSection.objects.bulk_create(
            WritingSection(
                job=job,
                position=position,
                heading=section["heading"],
                key_points=section["key_points"],
                passages=section["passages"],
            )
            for position, section in enumerate(source["sections"])
        )

    return _start(
        owner,
        kind=WritingJob.Kind.DOCUMENT,
        job_id=job_id,
        request_hash=fingerprint(request),
        fields={
            "outline": source,
            "outline_job": outline_job,
            "task_prompt": outline_job.task_prompt if outline_job else "",
            "title": source["title"],
            "target_knowledge_base": knowledge_base,
            "allow_missing_sections": allow_missing_sections,
            "progress_total": len(source["sections"]),
        },
        fill=fill,
        idempotency_key=idempotency_key,
        queue=queue,
    )


def passage_of(chunk: Chunk) -> dict:
    return {
        "chunk_id": chunk.pk,
        "document_id": chunk.document_id,
        "document_title": chunk.document.title,
        "knowledge_base_id": chunk.knowledge_base_id,
        "position": chunk.position,
        "text": chunk.text,
        "score": None,
    }


def resolve_passages(owner, outline: dict) -> dict:
    """The outline with each passage ({"chunk_id": ...}) filled in from the
    owner's chunks as they are now; NotOwned naming outline if a chunk is not
    the owner's or does not exist (the passages would show its text)."""
    sections = outline["sections"]
    wanted = {p["chunk_id"] for s in sections for p in s.get("passages", [])}
    chunks = {
        chunk.pk: chunk
        for chunk in Chunk.objects.filter(pk__in=wanted, knowledge_base__owner=owner)
        .select_related("document")
        .only(
            "id", "document_id", "knowledge_base_id", "position", "text",
            "document__title",
        )
    }  # fmt: skip
    unknown = sorted(wanted - set(chunks))
    if unknown:
        raise NotOwned(f"outline: no such chunk: {', '.join(map(str, unknown[:20]))}")

    def passages(section: dict) -> list[dict]:
        ids = dict.fromkeys(p["chunk_id"] for p in section.get("passages", []))
        return [passage_of(chunks[chunk_id]) for chunk_id in ids]

    return {
        "title": outline["title"],
        "sections": [
            {
                "heading": section["heading"],
                "key_points": list(section.get("key_points", [])),
                "passages": passages(section),
            }
            for section in sections
        ],
    }


# --- the tasks' writes ---------------------------------------------------------


def begin_job(job_pk: int) -> WritingJob | None:
    """Start or continue a job: running (a redelivered or re-queued run carries
    on); None if it is gone or already ended."""
    updated = WritingJob.objects.filter(
        pk=job_pk, state__in=WritingJob.ACTIVE_STATES
    ).update(
        state=State.RUNNING, started_at=Coalesce(F("started_at"), Value(timezone.now()))
    )
    if not updated:
        return None
    return WritingJob.objects.select_related("task").get(pk=job_pk)


def fail_job(job_pk: int, *, error: str) -> bool:
    """End an active job failed; False if it had ended already."""
    return bool(
        WritingJob.objects.filter(pk=job_pk, state__in=WritingJob.ACTIVE_STATES).update(
            state=State.FAILED, error=error[:5000], finished_at=timezone.now()
        )
    )


def cancelled_by_task(job_pk: int) -> None:
    """The job's task was cancelled (the task API, the task admin): so is the job."""
    WritingJob.objects.filter(pk=job_pk, state__in=WritingJob.ACTIVE_STATES).update(
        state=State.CANCELLED, error="Cancelled.", finished_at=timezone.now()
    )
    _cancel_open_sections(job_pk)


def _cancel_open_sections(job_pk: int) -> None:
    WritingSection.objects.filter(
        job_id=job_pk, status__in=(Status.PENDING, Status.WRITING)
    ).update(status=Status.CANCELLED, finished_at=timezone.now())


def retrieve(job: WritingJob) -> list[dict]:
    """The best JOBS_OUTLINE_PASSAGES passages for the job's prompt (whole
    knowledge bases, plus the context documents within theirs), less those far
    below the best (JOBS_MIN_RELATIVE_SCORE)."""
    bases = list(job.knowledge_bases.all())
    scopes: list[tuple[KnowledgeBase, dict | None]] = [(kb, None) for kb in bases]
    documents: dict[int, list[int]] = {}
    for document in job.context_documents.exclude(knowledge_base__in=bases):
        documents.setdefault(document.knowledge_base_id, []).append(document.pk)
    for kb in KnowledgeBase.objects.filter(pk__in=list(documents)):
        scopes.append((kb, {"document_ids": documents[kb.pk]}))
    hits = search.search_many(scopes, job.task_prompt, k=settings.JOBS_OUTLINE_PASSAGES)
    passages = [
        {
            "chunk_id": hit.chunk_id,
            "document_id": hit.document_id,
            "document_title": hit.document_title,
            "knowledge_base_id": kb_id,
            "position": hit.position,
            "text": hit.text,
            "score": round(float(hit.score), 4),
        }
        for kb_id, hit in hits
    ]
    return writing.relevant(passages, ratio=settings.JOBS_MIN_RELATIVE_SCORE)


def llm_passages(passages: list[dict]) -> list[llm.Passage]:
    return [
        llm.Passage(
            title=p["document_title"],
            text=p["text"],
            score=p["score"] or 0.0,
            ref=f"document {p['document_id']}, passage {p['position'] + 1}",
        )
        for p in passages
    ]


def complete(provider, messages, passages, *, step: int, total: int) -> str:
    """Stream a completion, reporting progress as it comes (where a cancel of the
    task stops it); the provider's text."""
    completion = llm.Completion()
    for _piece in provider.stream(
        messages, passages=llm_passages(passages), completion=completion
    ):
        # report_progress writes at most every CLAW_PROGRESS_INTERVAL
        report_progress(step, total, f"{len(completion.text)} characters written")
    return completion.text


def generate_outline(job_pk: int) -> dict:
    """The body of knowledge.generate_outline_from_query.

    1. The job becomes running (gone or ended: skipped).
    2. Search its knowledge bases with the task prompt (EmbeddingUnavailable
       propagates for the task to retry).
    3. The extractive provider builds the outline from the passages; a model is
       asked for JSON, which must be a valid outline (writing.OutlineInvalid).
    4. The outline is stored and the job succeeds. Failures raise JobFailed; the
       task's failure hook ends the job failed with the message.
    """
    job = begin_job(job_pk)
    if job is None:
        return {"job": job_pk, "status": "skipped"}
    try:
        passages = retrieve(job)
        report_progress(1, 2, f"retrieved {len(passages)} passages")
        if not passages:
            raise JobFailed(
                "No passage of the job's knowledge bases matches the prompt"
            )
        outline = build_outline(job, passages)
    except TaskCancelled:
        cancelled_by_task(job_pk)
        raise
    except writing.OutlineInvalid as exc:
        raise JobFailed(f"The model did not give a valid outline: {exc}") from exc
    except llm.LLMRejected as exc:
        raise JobFailed(f"LLMRejected: {exc}") from exc
    except EmbeddingError as exc:
        if isinstance(exc, EmbeddingUnavailable):
            raise
        raise JobFailed(f"Searching failed: {exc}") from exc
    finished = WritingJob.objects.filter(pk=job_pk, state=State.RUNNING).update(
        state=State.SUCCEEDED,
        outline=outline,
        title=outline["title"],
        progress_done=2,
        error="",
        finished_at=timezone.now(),
    )
    status = "succeeded" if finished else "ended meanwhile"
    return {"job": job.job_id, "status": status, "sections": len(outline["sections"])}


def build_outline(job: WritingJob, passages: list[dict]) -> dict:
    provider = llm.get_provider()
    limit = settings.JOBS_MAX_SECTIONS
    if provider.name == llm.ExtractiveProvider.name:
        return writing.extractive_outline(job.task_prompt, passages, max_sections=limit)
    messages = writing.outline_messages(job.task_prompt, max_sections=limit)
    text = complete(provider, messages, passages, step=1, total=2)
    return writing.parse_model_outline(text, passages, max_sections=limit)


# --- sections ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    positions: list[int]  # sections to write
    total: int


def plan_sections(job_pk: int) -> Plan | None:
    """Begin a document job and pick the sections to write: every section not
    done (on a re-run after the health check re-queued the job, the rest are
    kept). None if the job is gone or ended."""
    job = begin_job(job_pk)
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
        ledger.record_progress(
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
        return writing.extractive_section(outline)
    messages = writing.section_messages(section.job.title, outline)
    text = complete(provider, messages, section.passages, step=0, total=1)
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


def task_revoked(name: str, args: list, kwargs: dict, *, in_chord: bool) -> None:
    """A task of a job was revoked (terminated while it ran, or discarded as
    revoked): its section is cancelled, or its job, if not ended already."""
    if name == SECTION_TASK and len(args) >= 2:
        section_stopped(
            args[0],
            args[1],
            status=Status.CANCELLED,
            error="Cancelled.",
            alone=not in_chord,
        )
    elif name in (OUTLINE_TASK, DOCUMENT_TASK, FINISH_TASK):
        job_pk = kwargs.get("job_pk", args[0] if args else None)
        if job_pk is not None:
            cancelled_by_task(job_pk)


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
        + writing.shorten(s.error or s.status, 300)
        for s in sections[:limit]
    ]
    more = len(sections) - limit
    return "; ".join(named) + (f"; and {more} more" if more > 0 else "")


def finish_document(job_pk: int, *, celery_id: str) -> dict:
    """Merge the sections into the document: the body of the chord's callback.

    1. Nothing to do for a job that ended (cancelled, or finished by another
       run), a call from a stale attempt (celery_id is not the job task's current
       one) or while a section is still open.
    2. Failed sections fail the job with a summary naming them (JobFailed), unless
       the job allows missing sections and one section at least was written.
    3. The document is merged, its references checked against the chunks as they
       are now, and stored on the job (and added to the target knowledge base, to
       be vectorized) in one transaction that locks the job row, so two finishing
       runs cannot both add it.
    """
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
        fail_job(job_pk, error=summary)
        raise JobFailed(summary)
    merged = writing.merge(
        job.title,
        [
            writing.WrittenSection(
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


def _store_document(job: WritingJob, merged: writing.Merged) -> dict:
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
    except JobFailed as exc:
        ledger.mark_failed(celery_id, error=f"JobFailed: {exc}")
        return
    if outcome["status"] == "succeeded":
        ledger.mark_succeeded(celery_id)
    elif broken and outcome["status"] != "stale":
        # ended otherwise (cancelled): FAILURE, or REVOKED when it was cancelled
        ledger.mark_failed(celery_id, error=f"Chord broken: {broken}")


def chord_broken(job_pk: int, *, celery_id: str, error: str) -> None:
    """End a document job whose chord broke: a member failed outright (refused as
    poisoned or cancelled, killed at its hard time limit), so Celery fails the
    callback without running it. Sections left open are the failed ones (every
    member has reported when the chord breaks); the job then finishes as usual,
    and its task's record, which waited for the callback, ends with it."""
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
    records = job_records(job).filter(name=SECTION_TASK).exclude(error="")
    return {section_position(r): r.error for r in records.only("args", "error")}


# --- cancelling and reading ------------------------------------------------------


def job_records(job: WritingJob):
    """Every task record that worked on the job: its task and the sections'."""
    return TaskRecord.objects.filter(
        content_type=ContentType.objects.get_for_model(WritingJob), object_id=job.pk
    )


def cancel_job(job: WritingJob) -> WritingJob:
    """Cancel a pending or running job and every task working on it.

    1. The job and its open sections become cancelled (a finished job: JobFinished).
    2. Each active record is cancelled through the ledger: queued sections never
       run, running ones stop at their next progress report.
    3. The job's task, if it fanned out, waits for a chord that will not call back
       (its members are cancelled), so it runs nowhere: it ends REVOKED now.
    Sections published after this (the fan-out was between its checks) find the
    job cancelled and skip.
    """
    with transaction.atomic():
        cancelled = WritingJob.objects.filter(
            pk=job.pk, state__in=WritingJob.ACTIVE_STATES
        ).update(state=State.CANCELLED, error="Cancelled.", finished_at=timezone.now())
        if not cancelled:
            job.refresh_from_db()
            raise JobFinished(f"Job {job.job_id!r} is already {job.state}")
        _cancel_open_sections(job.pk)
        for record in job_records(job).filter(state__in=TaskRecord.ACTIVE_STATES):
            with contextlib.suppress(ledger.InvalidTransition):
                ledger.cancel(record)  # one that finished meanwhile needs none
        waiting = TaskRecord.objects.filter(
            pk=job.task_id, state=TaskRecord.State.STARTED, children__isnull=False
        )
        for record in waiting.distinct():
            ledger.mark_revoked(record.celery_id, reason="job cancelled")
    job.refresh_from_db()
    return job


def delete_job(job: WritingJob) -> None:
    """Delete a job with its sections, cancelling its tasks first if it is still
    active (its task records stay, as the ledger's history)."""
    with transaction.atomic():
        if not job.is_final:
            with contextlib.suppress(JobFinished):  # it ended meanwhile
                cancel_job(job)
        job.delete()


def job_events(job: WritingJob, limit: int = 500):
    """The job's timeline: its task's events, and the sections' tasks' events
    other than their progress reports (these stay in the task API)."""
    records = job_records(job)
    events = TaskEvent.objects.filter(record__in=records).filter(
        Q(record_id=job.task_id) | ~Q(kind=TaskEvent.Kind.PROGRESS)
    )
    return events.select_related("record").order_by("-id")[:limit]


def section_position(record: TaskRecord) -> int | None:
    """The section a knowledge.write_section record writes (its second argument)."""
    args = record.args
    if record.name != SECTION_TASK or not isinstance(args, list) or len(args) < 2:
        return None
    return args[1] if isinstance(args[1], int) else None


def section_records(job: WritingJob) -> dict[int, TaskRecord]:
    """The task record of each section, by position (the latest if several)."""
    records = job_records(job).filter(name=SECTION_TASK).order_by("id")
    return {section_position(record): record for record in records}
