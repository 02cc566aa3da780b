"""claw.generate_ai_response on Celery's threads pool, in real worker processes.

What prefork gave for free must hold on threads: a reply past its deadline ends
as it does on prefork (the same scenarios run on both pools), cancel stops a
streaming reply, transient errors retry, the cluster-wide rate limit holds, and
database connections neither leak nor pile up. One prefork worker (one
process) and one threads worker serve their own queues against a module-wide
local chat-completions server; short deadlines keep each test to seconds.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import pytest
from django.db import connection
from django_celery_results.models import TaskResult

from claw import conversations
from claw.models import Message
from claw.tests.conftest import ScriptedServer, sse
from claw.tests.test_reply_worker import wait_record, wait_status
from tasks_app import services
from tasks_app.models import TaskRecord
from tests.harness import CeleryProcess, wait_for
from tests.test_smoke_embedded import manage

pytestmark = pytest.mark.worker
THREADS = 16  # the threads worker's concurrency
DEADLINE = 2.0  # AI_REPLY_DEADLINE of both workers
QUEUES = {"prefork": "conv_prefork", "threads": "conv_threads"}
# Connections of the threads worker, told apart in pg_stat_activity by name.
APP_NAME = "claw-threads-test"


@pytest.fixture(scope="module")
def llm_server():
    with ScriptedServer() as server:
        yield server


def worker_process(kind: str, env: dict, artifacts_dir) -> CeleryProcess:
    concurrency = "1" if kind == "prefork" else str(THREADS)
    # one reserved message per pool slot, as worker-ai and runstack run it
    args = [
        "-P",
        kind,
        "-c",
        concurrency,
        "-Q",
        QUEUES[kind],
        "--prefetch-multiplier",
        "1",
    ]
    return CeleryProcess("worker", env, args, artifacts_dir / f"worker-{kind}.log")


@pytest.fixture(scope="module")
def pool_workers(worker_env, artifacts_dir, llm_server):
    from claw.celery import app

    env = {
        **worker_env,
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": llm_server.url + "/v1",
        "LLM_MODEL": "test-model",
        "AI_RATE_LIMIT": "",  # its own test below sets one
        "AI_RETRY_BACKOFF": "0.2",
        "AI_REPLY_DEADLINE": str(DEADLINE),
        "AI_STREAM_SAVE_INTERVAL": "0.2",
    }
    workers = {
        "prefork": worker_process("prefork", env, artifacts_dir),
        "threads": worker_process(
            "threads",
            {
                **env,
                "DATABASE_URL": f"{env['DATABASE_URL']}?application_name={APP_NAME}",
            },
            artifacts_dir,
        ),
    }
    try:
        for worker in workers.values():
            worker.start()
        for worker in workers.values():
            worker.wait_ready(app)
        yield workers
    finally:
        for worker in workers.values():
            worker.stop()


@pytest.fixture
def server(llm_server, pool_workers, transactional_db):
    llm_server.script.clear()
    llm_server.requests.clear()
    return llm_server


def ask(user, pool: str, content: str = "What is CLAW?") -> Message:
    conversation = conversations.create_conversation(user)
    submission = conversations.post_message(conversation, content, queue=QUEUES[pool])
    return submission.assistant_message


def worker_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            [APP_NAME],
        )
        return cursor.fetchone()[0]


# The provider streams two pieces and then goes quiet, or says nothing at all,
# for far longer than the deadline.
QUIET_AFTER_TEXT = sse(
    "Partial ", "answer", pause=0.5, stall={"after": 2, "seconds": 15}
)
SILENT = sse("never seen", sleep=15)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_reply_that_streamed_keeps_its_text_truncated_at_the_deadline(
    server, alice, pool
):
    server.script.append(QUIET_AFTER_TEXT)
    started = time.monotonic()
    message = ask(alice, pool)

    wait_status(message, "done", "failed", timeout=DEADLINE + 15)

    # cut at the deadline, not when the provider spoke again
    assert time.monotonic() - started < DEADLINE + 8
    record = wait_record(message, "SUCCESS")
    assert (message.status, message.truncated) == ("done", True)
    assert message.content == "Partial answer"
    stored = TaskResult.objects.get(task_id=record.celery_id)
    assert '"stopped": "deadline"' in stored.result


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_reply_with_nothing_streamed_by_the_deadline_fails(server, alice, pool):
    server.script.append(SILENT)
    started = time.monotonic()
    message = ask(alice, pool)

    wait_status(message, "done", "failed", timeout=DEADLINE + 15)

    assert time.monotonic() - started < DEADLINE + 8
    record = wait_record(message, "FAILURE")
    assert message.status == "failed" and message.content == ""
    assert "DeadlineExceeded" in message.error and "DeadlineExceeded" in record.error
    assert len(server.requests) == 1  # a deadline is not retried


def test_cancelling_a_streaming_reply_on_threads_stops_it_within_two_seconds(
    server, alice
):
    server.script.append(sse(*[f"w{n} " for n in range(60)], pause=0.1))
    message = ask(alice, "threads")
    wait_for(
        lambda: Message.objects.filter(pk=message.pk).exclude(content="").exists(),
        20,
        interval=0.05,
        message="streaming to start",
    )

    cancelled_at = time.monotonic()
    services.cancel(TaskRecord.objects.get(pk=message.task_id))
    wait_status(message, "failed", timeout=10)

    # revoke(terminate=True) cannot stop a thread: the reply stopped at its next
    # progress write, which found the durable cancel flag
    assert time.monotonic() - cancelled_at < 2
    wait_record(message, "REVOKED")
    assert "Cancelled" in message.error and message.truncated is True
    assert "w59" not in message.content


def test_a_transient_error_on_threads_retries_and_succeeds(server, alice):
    server.script += [
        {"status": 503, "json": {"error": {"message": "overloaded"}}},
        sse("Hello after the retry."),
    ]
    message = ask(alice, "threads")

    wait_status(message, "done")

    record = wait_record(message, "SUCCESS")
    assert message.content == "Hello after the retry."
    assert len(server.requests) == 2
    assert record.events.filter(kind="retry").count() == 1


def test_a_hundred_concurrent_replies_leave_no_leaked_database_connections(
    server, alice
):
    # given a hundred questions answered in a quarter of a second each
    count = 100
    server.script += [sse("Short ", "answer.", pause=0.1) for _ in range(count)]
    conversation = conversations.create_conversation(alice)
    ids = [
        conversations.post_message(
            conversation, f"question {n}", queue=QUEUES["threads"]
        ).assistant_message.pk
        for n in range(count)
    ]
    replies = Message.objects.filter(pk__in=ids)

    # when they all run, at most THREADS at a time
    peak = 0

    def finished():
        nonlocal peak
        peak = max(peak, worker_connections())
        return not replies.exclude(status__in=["done", "failed"]).exists()

    wait_for(finished, 90, interval=0.1, message="a hundred replies")

    # then each thread held one connection at most, and none is left over:
    # Celery's Django fixup closes (or keeps, with CELERY_DB_REUSE_MAX, one
    # per thread) connections per task, in the thread that ran it
    assert set(replies.values_list("status", flat=True)) == {"done"}
    assert 0 < peak <= THREADS + 1  # the main thread may hold one too
    wait_for(
        lambda: worker_connections() <= THREADS + 1,
        10,
        message="connections back to at most one per thread",
    )
    print(f"\n[connections] peak {peak}, after {worker_connections()}")
    assert len(server.requests) == count


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_the_cluster_wide_rate_limit_holds_across_threads(
    transactional_db, start_worker, alice, backend
):
    limit, period, count = 3, 1.0, 9
    start_worker(
        "-P",
        "threads",
        "-c",
        "8",
        "-Q",
        "conv_threads_rate",
        "--prefetch-multiplier",
        "1",
        env={
            "LLM_PROVIDER": "extractive",
            "AI_RATE_LIMIT": f"{limit}/{period:g}",
            "AI_RATE_LIMIT_BACKEND": backend,
        },
    )
    conversation = conversations.create_conversation(alice)
    ids = [
        conversations.post_message(
            conversation, f"q{n}", queue="conv_threads_rate"
        ).assistant_message.pk
        for n in range(count)
    ]
    replies = Message.objects.filter(pk__in=ids)

    wait_for(
        lambda: not replies.exclude(status__in=["done", "failed"]).exists(),
        45,
        interval=0.2,
        message="every reply to finish",
    )

    # eight threads took their starts at once; the shared counter let only
    # `limit` of them through per window
    per_window = Counter(math.floor(m.started_at.timestamp() / period) for m in replies)
    assert set(replies.values_list("status", flat=True)) == {"done"}
    assert max(per_window.values()) <= limit
    assert len(per_window) >= math.ceil(count / limit)


STUCK_STATEMENT = """
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("SELECT pg_sleep(10)")
"""


def test_a_statement_timeout_ends_a_stuck_statement(worker_env):
    # What docker-compose sets for worker-ai, whose threads cannot be killed.
    env = {**worker_env, "DB_STATEMENT_TIMEOUT": "1"}
    started = time.monotonic()
    with pytest.raises(AssertionError, match="statement timeout"):
        manage(env, "shell", "-c", STUCK_STATEMENT)
    assert time.monotonic() - started < 8  # python start-up included
