"""Document jobs in real worker processes when sections fail, workers die and
jobs are cancelled.

Sections are written by the openai provider against the local chat-completions
server (claw/tests/conftest.py's ScriptedServer), so a test decides what each
section's request gets and how slowly. One worker (prefork, one process) on its
own queue serves the module: sections run one after the other in outline order,
and the session's shared worker never takes them. Its CLAW_MAX_REDELIVERIES is 0,
so a section whose process dies every time is stopped after its 1 + 3 retries
deliveries, and the short visibility timeout of the fault tests brings back the
messages of a killed worker in seconds.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from django_celery_results.models import TaskResult

from claw.tests.conftest import ScriptedServer, sse
from knowledge import services
from knowledge.tests.conftest import add_ready
from tasks_app import services as ledger
from tasks_app.models import TaskRecord
from tests.harness import CeleryProcess, wait_for
from tests.reliability.conftest import FAULT_ENV, report
from writing import jobs
from writing.models import WritingJob, WritingSection

pytestmark = [pytest.mark.worker]
QUEUE = "jobs_llm"
TIMEOUT = 40  # seconds any job here may take to end, faults included


@pytest.fixture(scope="module")
def llm_server():
    with ScriptedServer() as server:
        yield server


def llm_env(worker_env, server) -> dict:
    return {
        **worker_env,
        **FAULT_ENV,
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": server.url + "/v1",
        "LLM_MODEL": "test-model",
        "CLAW_MAX_REDELIVERIES": "0",
    }


@pytest.fixture(scope="module")
def llm_worker(worker_env, artifacts_dir, llm_server):
    from claw.celery import app

    worker = CeleryProcess(
        "worker",
        llm_env(worker_env, llm_server),
        ["-Q", QUEUE, "-c", "1"],
        artifacts_dir / "worker-jobs.log",
    )
    with worker.running(app):
        yield worker


@pytest.fixture
def server(llm_server, transactional_db):
    llm_server.script.clear()
    llm_server.requests.clear()
    return llm_server


@pytest.fixture
def chunks(alice):
    kb = services.create_knowledge_base(alice, name="Teas")
    texts = ["Green tea is steamed.", "Black tea is oxidised.", "Oolong is between."]
    return [
        add_ready(kb, f"Tea {n}", text).chunks.get() for n, text in enumerate(texts)
    ]


def start(alice, chunks, *, queue=QUEUE, **options) -> WritingJob:
    outline = {
        "title": "Teas",
        "sections": [
            {"heading": f"Part {n}", "key_points": [], "passages": [{"chunk_id": c.pk}]}
            for n, c in enumerate(chunks, 1)
        ],
    }
    return jobs.start_document_job(alice, outline=outline, queue=queue, **options).job


def wait_ended(job: WritingJob, timeout: float = TIMEOUT) -> float:
    started = time.monotonic()

    def ended():
        job.refresh_from_db()
        return job.is_final

    wait_for(ended, timeout, interval=0.1, message=f"job {job.job_id} to end")
    return time.monotonic() - started


def wait_requests(server, count: int, timeout: float = 20) -> None:
    wait_for(
        lambda: len(server.requests) >= count,
        timeout,
        interval=0.05,
        message=f"{count} requests to the provider",
    )


def section_record(job: WritingJob, position: int) -> TaskRecord:
    return jobs.section_records(job)[position]


def slow(word: str, pieces: int = 30) -> dict:
    return sse(*[f"{word}{n} " for n in range(pieces)], pause=0.2)


def test_a_failed_section_fails_the_job_with_a_summary_naming_it(
    server, llm_worker, alice, chunks
):
    server.script += [
        sse("Green [1]."),
        {"status": 400, "json": {"error": {"message": "context too long"}}},
        sse("Oolong [1]."),
    ]
    job = start(alice, chunks)

    wait_ended(job)

    assert job.state == "failed"
    assert job.error == (
        "1 of 3 sections failed: section 2 'Part 2': LLMRejected: LLM provider "
        "answered 400: context too long"
    )
    statuses = list(job.sections.values_list("status", flat=True))
    assert statuses == ["done", "failed", "done"]  # the others still ran
    wait_for(lambda: job.task.__class__.objects.get(pk=job.task_id).is_final, 10)
    record = TaskRecord.objects.get(pk=job.task_id)
    assert record.state == "FAILURE" and "section 2 'Part 2'" in record.error


def test_with_missing_sections_allowed_the_job_completes_and_marks_it(
    server, llm_worker, alice, chunks
):
    server.script += [
        sse("Green [1]."),
        {"status": 400, "json": {"error": {"message": "context too long"}}},
        sse("Oolong [1]."),
    ]
    job = start(alice, chunks, allow_missing_sections=True)

    wait_ended(job)

    assert job.state == "succeeded", job.error
    assert job.missing_sections == [1]
    assert "## Part 2\n\n*This section is missing: LLMRejected" in job.content
    assert "Green [1]." in job.content and "Oolong [2]." in job.content
    assert [r["chunk_id"] for r in job.references] == [chunks[0].pk, chunks[2].pk]


def test_killing_the_worker_process_mid_section_rewrites_it_and_the_job_ends(
    server, llm_worker, alice, chunks
):
    server.script += [sse("Green [1]."), slow("partial"), sse("Black, again [1].")]
    job = start(alice, chunks[:2])
    wait_requests(server, 2)  # the second section is streaming
    (child,) = llm_worker.child_pids()  # -c 1: the process writing it

    os.kill(child, signal.SIGKILL)
    seconds = wait_ended(job)

    report("kill -9 mid-section", seconds_to_end=seconds)
    assert job.state == "succeeded", job.error
    second = job.sections.get(position=1)
    assert second.content == "Black, again [1]."  # rewritten, not appended
    assert "partial" not in job.content
    assert section_record(job, 1).deliveries == 2
    assert len(server.requests) == 3


def test_a_section_whose_worker_dies_every_time_fails_the_job_not_hangs_it(
    server, llm_worker, alice, chunks
):
    # 1 + 3 retries deliveries and CLAW_MAX_REDELIVERIES=0: the fifth is refused
    # as poisoned. Each delivery after a kill waits for the new pool process's
    # start-up handshake (Celery's worker_proc_alive_timeout, 4 s): about 20 s.
    deliveries = 4
    server.script += [slow("doomed")] * deliveries
    job = start(alice, chunks[:1])
    started = time.monotonic()

    for delivery in range(1, deliveries + 1):
        wait_requests(server, delivery)
        (child,) = wait_for(llm_worker.child_pids, 10, message="a pool process")
        os.kill(child, signal.SIGKILL)
    seconds = wait_ended(job)

    total = time.monotonic() - started
    report("section killed every time", deliveries=deliveries, seconds=total)
    assert total < 2 * TIMEOUT
    assert job.state == "failed"
    assert job.error.startswith("1 of 1 sections failed: section 1 'Part 1': ")
    assert "worker process died every time" in job.error
    record = section_record(job, 0)
    assert record.state == "FAILURE" and record.deliveries == deliveries
    wait_for(lambda: TaskRecord.objects.get(pk=job.task_id).is_final, 10)
    assert TaskRecord.objects.get(pk=job.task_id).state == "FAILURE"  # the errback
    assert seconds < TIMEOUT


def test_cancelling_a_job_stops_every_section_task(server, llm_worker, alice, chunks):
    server.script += [slow("long", pieces=100)]
    job = start(alice, chunks)
    wait_requests(server, 1)  # the first section streams; the others are queued
    wait_for(lambda: len(jobs.section_records(job)) == 3, 10, message="3 records")

    jobs.cancel_job(job)

    records = lambda: list(jobs.section_records(job).values())  # noqa: E731
    wait_for(
        lambda: all(r.state == "REVOKED" for r in records()),
        15,
        message="every section task to be revoked",
    )
    # the queued ones reach the worker and are refused without running
    ids = [r.celery_id for r in records()]
    wait_for(
        lambda: (
            TaskResult.objects.filter(task_id__in=ids, status="REVOKED").count() == 3
        ),
        15,
        message="the worker to refuse the queued sections",
    )
    job.refresh_from_db()
    assert job.state == "cancelled"
    assert set(job.sections.values_list("status", flat=True)) == {
        WritingSection.Status.CANCELLED
    }
    first, *queued = sorted(records(), key=lambda r: r.args[1])
    assert first.attempts == 1 and [r.attempts for r in queued] == [0, 0]
    assert len(server.requests) == 1  # nothing else was written
    assert TaskRecord.objects.get(pk=job.task_id).state == "REVOKED"
    assert "long99" not in WritingSection.objects.get(job=job, position=0).content


def test_killing_the_whole_worker_mid_section_still_ends_the_job(
    server, start_worker, worker_env, alice, chunks
):
    # The worker's main process dies too, so nothing requeues the message: Redis
    # hands it out again after the visibility timeout, to the next worker.
    queue = "jobs_llm_kill"
    env = llm_env(worker_env, server)
    first = start_worker("-Q", queue, "-c", "1", env=env)
    server.script += [slow("lost"), sse("Green, again [1].")]
    job = start(alice, chunks[:1], queue=queue)
    wait_requests(server, 1)

    first.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    start_worker("-Q", queue, "-c", "1", env=env)
    wait_ended(job)

    report("kill -9 of the worker", seconds_to_end=time.monotonic() - killed_at)
    assert job.state == "succeeded", job.error
    assert job.sections.get().content == "Green, again [1]."
    assert section_record(job, 0).deliveries == 2


def test_cancelling_a_running_job_task_through_the_task_api_cancels_the_job(
    server, llm_worker, alice, chunks
):
    # prefork terminates the process running it: no code of the task runs again,
    # so the job hears of it from the task_revoked signal
    server.script += [slow("thinking", pieces=100)]
    kb = chunks[0].knowledge_base
    job = jobs.start_outline_job(
        alice, task_prompt="green tea", knowledge_bases=[kb], queue=QUEUE
    ).job
    wait_requests(server, 1)  # the model is writing the outline

    ledger.cancel(job.task)

    wait_ended(job, timeout=15)
    assert (job.state, job.outline) == ("cancelled", None)
    wait_for(lambda: TaskRecord.objects.get(pk=job.task_id).state == "REVOKED", 10)
