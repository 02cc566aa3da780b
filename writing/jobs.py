"""The only writer of writing jobs (with writing.sections, which writes a
document job's sections and finishes it): API, admin and the job tasks all come
through these two.

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

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from claw import services as llm  # the AI providers, as conversations offer them
from knowledge import services
from knowledge.services import (
    Chunk,
    EmbeddingError,
    EmbeddingUnavailable,
    KnowledgeBase,
)
from tasks_app import fanout, ownership
from tasks_app import services as ledger
from tasks_app.models import TaskEvent, TaskRecord
from tasks_app.progress import TaskCancelled, report_progress
from writing import outlines
from writing.models import WritingJob, WritingSection

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


def outline_request(task_prompt, knowledge_bases, documents, context_files=None):
    """What the client asked for (a repeated job_id must ask the same)."""
    request = {
        "kind": WritingJob.Kind.OUTLINE,
        "task_prompt": task_prompt,
        "knowledge_bases": sorted(kb.pk for kb in knowledge_bases),
        "documents": sorted(document.pk for document in documents),
    }
    if context_files:
        request["context_files"] = sorted(context_files.items())
    return request


NOTHING_TO_DRAW_ON = (
    "knowledge_base_ids: there is nothing to draw on: you have no knowledge base "
    "with a ready document. Add documents to a knowledge base (POST "
    "/api/v1/documents/ or /api/v1/documents/upload/) and wait until they are "
    "ready, name them (knowledge_base_ids, document_ids), or send the texts with "
    "the request as context_files ({file name: text}). The extractive provider "
    "only quotes sources; with LLM_PROVIDER=openai an outline is written from the "
    "prompt alone."
)


def writes_without_sources() -> bool:
    """Whether the configured provider can write an outline from a prompt alone
    (a model can; the offline extractive provider only quotes passages)."""
    return llm.get_provider().name != llm.ExtractiveProvider.name


def start_outline_job(
    owner,
    *,
    task_prompt: str,
    knowledge_bases=(),
    documents=(),
    context_files: dict[str, str] | None = None,
    job_id: str | None = None,
    idempotency_key: str | None = None,
    queue: str | None = None,
) -> Started:
    """An outline job over whole knowledge bases and/or some documents, with its
    task submitted after commit (services.submit); or the job job_id names.

    context_files ({file name: text}, the old API's inline sources) are stored as
    documents of the owner's context knowledge base and searched with the rest.
    With no source named at all (the old API's default), the job draws on all the
    owner's knowledge bases that have a ready document; with none of those either,
    a model writes from the prompt alone and the extractive provider refuses
    (InvalidInput naming knowledge_base_ids, saying what to add).
    """
    if not task_prompt or not task_prompt.strip(services.BLANK):
        raise InvalidInput("task_prompt: must not be blank")
    request_hash = fingerprint(
        outline_request(task_prompt, knowledge_bases, documents, context_files)
    )
    if context_files:
        documents = [*documents, *services.add_context_files(owner, context_files)]
    if not knowledge_bases and not documents:
        knowledge_bases = services.ready_knowledge_bases(owner)
    if not knowledge_bases and not documents and not writes_without_sources():
        raise InvalidInput(NOTHING_TO_DRAW_ON)

    def fill(job: WritingJob) -> None:
        job.knowledge_bases.set(knowledge_bases)
        job.context_documents.set(documents)

    return _start(
        owner,
        kind=WritingJob.Kind.OUTLINE,
        job_id=job_id,
        request_hash=request_hash,
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


def ensure_owned(job_pk: int, *, celery_id: str | None = None) -> None:
    """Raise ownership.NotOwned unless the job belongs to the owner of the task
    running for it (or of the record whose attempt is celery_id). Every writing
    task calls this first, before it changes anything."""
    owner = WritingJob.objects.filter(pk=job_pk).values_list("owner_id", flat=True)
    ownership.ensure_owned(*owner, what=f"writing job {job_pk}", celery_id=celery_id)


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
    hits = services.search_many(
        scopes, job.task_prompt, k=settings.JOBS_OUTLINE_PASSAGES
    )
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
    return outlines.relevant(passages, ratio=settings.JOBS_MIN_RELATIVE_SCORE)


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
       asked for JSON, which must be a valid outline (outlines.OutlineInvalid).
    4. The outline is stored and the job succeeds. Failures raise JobFailed; the
       task's failure hook ends the job failed with the message.
    """
    ensure_owned(job_pk)
    job = begin_job(job_pk)
    if job is None:
        return {"job": job_pk, "status": "skipped"}
    try:
        # texts sent with the request (context_files) are searched at once
        services.vectorize_now(job.context_documents.all())
        passages = retrieve(job)
        report_progress(1, 2, f"retrieved {len(passages)} passages")
        if not passages and (has_sources(job) or not writes_without_sources()):
            raise JobFailed(
                "No passage of the job's knowledge bases matches the prompt"
                if has_sources(job)
                else NOTHING_TO_DRAW_ON.partition(": ")[2]
            )
        # no sources at all: a model writes the outline from the prompt alone
        outline = build_outline(job, passages)
    except TaskCancelled:
        cancelled_by_task(job_pk)
        raise
    except outlines.OutlineInvalid as exc:
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


def has_sources(job: WritingJob) -> bool:
    return job.knowledge_bases.exists() or job.context_documents.exists()


def build_outline(job: WritingJob, passages: list[dict]) -> dict:
    provider = llm.get_provider()
    limit = settings.JOBS_MAX_SECTIONS
    if provider.name == llm.ExtractiveProvider.name:
        return outlines.extractive_outline(
            job.task_prompt, passages, max_sections=limit
        )
    messages = outlines.outline_messages(job.task_prompt, max_sections=limit)
    text = complete(provider, messages, passages, step=1, total=2)
    return outlines.parse_model_outline(text, passages, max_sections=limit)


# --- cancelling and reading ------------------------------------------------------


# --- retrying ---------------------------------------------------------------------


class NotRetryable(Exception):
    """The job cannot be retried, and why (API: 409)."""


def reopen_for_retry(record: TaskRecord) -> None:
    """Before a new attempt of a job's own task (tasks_app.services.retry calls
    the handler writing.apps registers with lifecycle.on_retry, in its
    transaction): a failed job becomes pending again
    so the attempt reruns it from where it failed: the outline, or a document's
    sections not done (sections.plan_sections). A job that succeeded or was
    cancelled refuses, saying why; an active one (its task was lost) carries on.
    """
    job_pk = _job_pk(record, record.kwargs.get("job_pk"), *record.args[:1])
    job = WritingJob.objects.select_for_update().filter(pk=job_pk).first()
    if job is None:
        raise ledger.InvalidTransition(f"Task #{record.pk}: its writing job is gone")
    if job.state in WritingJob.ACTIVE_STATES:
        return
    if job.state != State.FAILED:
        raise ledger.InvalidTransition(
            f"Task #{record.pk} belongs to writing job {job.job_id!r}, which "
            f"{job.state}: only a failed job is rerun (post a new job instead)"
        )
    WritingJob.objects.filter(pk=job_pk).update(
        state=State.PENDING, error="", finished_at=None
    )


def refuse_section_retry(record: TaskRecord):
    """A section's task of an ended job is not retried alone (the job would stay
    failed): the job's retry rewrites every failed section and merges. While the
    job is active (the health check re-queues a lost section, which then
    finishes the job itself if it is the last) the retry goes ahead."""
    job_pk = _job_pk(record, *record.args[:1])
    position = record.args[1] if len(record.args) > 1 else "?"
    job = WritingJob.objects.select_related("task").filter(pk=job_pk).first()
    if job is not None and job.state in WritingJob.ACTIVE_STATES:
        return
    name = repr(job.job_id) if job else f"#{job_pk}"
    job_task = f"its task #{job.task_id}, " if job and job.task_id else ""
    raise ledger.InvalidTransition(
        f"Task #{record.pk} writes section {position} of writing job {name}: retry "
        f"the job instead ({job_task}or POST /api/v1/jobs/<job_id>/retry/), which "
        "rewrites every failed section and merges the document"
    )


def _job_pk(record: TaskRecord, *candidates) -> int:
    """The writing job a record's (possibly staff-edited) arguments name: the
    first integer among candidates; InvalidTransition if none is one."""
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ledger.InvalidTransition(
        f"Task #{record.pk}: its arguments name no writing job (an integer id)"
    )


def retry_job(job: WritingJob) -> WritingJob:
    """Rerun a failed job from where it failed, through a new attempt of its own
    task (NotRetryable, saying why, otherwise)."""
    if job.state != State.FAILED:
        raise NotRetryable(
            f"Job {job.job_id!r} is {job.state}: only a failed job can be retried"
        )
    if job.task is None:
        raise NotRetryable(f"Job {job.job_id!r} has no task to retry")
    try:
        ledger.retry(job.task)
    except ledger.InvalidTransition as exc:
        raise NotRetryable(str(exc)) from None
    job.refresh_from_db()
    return job


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
        fanout.cancel_waiting_parents(
            TaskRecord.objects.filter(pk=job.task_id), reason="job cancelled"
        )
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
