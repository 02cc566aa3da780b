"""Vectorizing for a remote embedding endpoint, on the threads-pool worker.

An openai knowledge base's vectorize tasks go to knowledge_remote, which only the
threads worker started here serves (the session worker serves every other
queue, as runstack and docker-compose split them), against a real local server
that speaks the embeddings protocol.
"""

from __future__ import annotations

import itertools

import pytest

from claw.tests.conftest import ScriptedServer
from knowledge import services
from knowledge.models import Chunk, Document
from knowledge.tests.test_worker import run_update, wait_final
from tasks_app import workers
from tasks_app.models import TaskEvent, TaskRecord
from tests.harness import CeleryProcess, least_deferrals

pytestmark = [pytest.mark.worker]
THREADS = 8
RATE = 4  # vectorize starts per second on the threads worker


@pytest.fixture(scope="module")
def embedding_server():
    with ScriptedServer() as server:
        yield server


@pytest.fixture(scope="module")
def threads_worker(worker_env, artifacts_dir, embedding_server):
    from claw.celery import app

    env = {
        **worker_env,
        "EMBEDDING_BASE_URL": embedding_server.url,
        "EMBEDDING_TIMEOUT": "5",
        # cluster-wide, 4 starts a second: an update of more documents is paced
        "KNOWLEDGE_VECTORIZE_RATE_LIMIT": f"{RATE}/1",
    }
    args = ["-P", "threads", "-c", str(THREADS), "-Q", services.REMOTE_QUEUE]
    worker = CeleryProcess("worker", env, args, artifacts_dir / "worker-remote.log")
    with worker.running(app):
        yield worker


@pytest.fixture
def server(embedding_server, threads_worker, transactional_db):
    embedding_server.script.clear()
    embedding_server.requests.clear()
    return embedding_server


def one_vector(n: int) -> dict:
    return {"status": 200, "json": {"data": [{"index": 0, "embedding": [n, 1, 0]}]}}


def remote_kb(owner):
    return services.create_knowledge_base(
        owner,
        name="Remote",
        embedding_provider="openai",
        embedding_model="emb-model",
        embedding_dimension=3,
    )


def test_a_remote_document_is_vectorized_on_the_threads_worker(
    server, threads_worker, alice
):
    server.script.append(one_vector(2))
    kb = remote_kb(alice)
    document = services.add_document(kb, title="T", content="Tea is a drink.")

    record = wait_final(TaskRecord.objects.get(name=services.VECTORIZE), timeout=30)

    assert record.state == "SUCCESS", record.error
    assert (record.queue, record.worker) == (
        "knowledge_remote",
        threads_worker.hostname,
    )
    document.refresh_from_db()
    assert (document.status, document.chunk_count) == (Document.Status.READY, 1)
    assert Chunk.objects.get(document=document).model_name == "openai:emb-model"
    assert server.requests[0]["body"] == {
        "model": "emb-model",
        "input": ["Tea is a drink."],
    }


def test_an_update_fans_its_remote_documents_out_to_the_threads_worker(
    server, celery_worker, threads_worker, alice
):
    # given an openai knowledge base of 6 documents (one chunk each)
    kb = remote_kb(alice)
    documents = [
        services.add_document(kb, title=f"D{n}", content=f"Note {n}.", vectorize=False)
        for n in range(6)
    ]
    server.script.extend(one_vector(n) for n in range(6))
    # each answer waits 1 s: on 8 threads the documents wait side by side
    for step in server.script:
        step["sleep"] = 1.0

    record, summary = run_update(kb, "incremental")

    # the update itself ran on prefork, every document on the threads worker
    assert record.state == "SUCCESS", record.error
    assert record.worker == celery_worker.hostname
    assert sorted(summary["vectorized"]) == sorted(d.pk for d in documents)
    children = TaskRecord.objects.filter(parent=record, name=services.VECTORIZE)
    assert set(children.values_list("queue", "worker")) == {
        ("knowledge_remote", threads_worker.hostname)
    }
    assert not Document.objects.exclude(status=Document.Status.READY).exists()
    # runs overlapped: each started before another one finished
    runs = sorted(children.values_list("started_at", "finished_at"))
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(runs))


def test_the_workers_list_tells_the_threads_pool_from_prefork(
    celery_worker, threads_worker
):
    found = {w.name: w for w in workers.cluster(timeout=1)}

    threads = found[threads_worker.hostname]
    assert (threads.pool, threads.concurrency) == ("threads", THREADS)
    assert threads.queues == ["knowledge_remote"]
    assert found[celery_worker.hostname].pool == "prefork"


def test_a_transient_endpoint_error_retries_and_the_document_ends_ready(
    server, threads_worker, alice
):
    server.script += [{"status": 503, "json": {"error": "busy"}}, one_vector(1)]
    kb = remote_kb(alice)
    document = services.add_document(kb, title="T", content="Retry me.")

    record = wait_final(TaskRecord.objects.get(name=services.VECTORIZE), timeout=30)

    assert record.state == "SUCCESS", record.error
    retries = record.events.filter(kind="retry")
    assert "Embedding endpoint answered 503: busy" in retries.get().data["error"]
    document.refresh_from_db()
    assert document.status == Document.Status.READY
    assert len(server.requests) == 2


def test_an_update_paced_by_the_rate_limit_with_a_transient_error_still_finishes(
    server, celery_worker, threads_worker, alice
):
    # given 10 documents: 4 may start per second, the first answer is a 503
    kb = remote_kb(alice)
    documents = [
        services.add_document(kb, title=f"D{n}", content=f"Text {n}.", vectorize=False)
        for n in range(10)
    ]
    server.script.append({"status": 503, "json": {"error": "busy"}})
    server.script.extend(one_vector(n) for n in range(10))

    record, summary = run_update(kb, "incremental")

    # the chord waited for its deferred and retried members
    assert record.state == "SUCCESS", record.error
    assert sorted(summary["vectorized"]) == sorted(d.pk for d in documents)
    assert not Document.objects.exclude(status=Document.Status.READY).exists()
    children = TaskRecord.objects.filter(parent=record, name=services.VECTORIZE)
    retries = TaskEvent.objects.filter(record__in=children, kind="retry")
    # at least what the windows of the first deliveries imply (10 - RATE when
    # all ten arrive within one second; fewer on a slow machine that spreads them)
    assert retries.filter(data__error__icontains="rate limit").count() >= max(
        1, least_deferrals(list(children), limit=RATE, period=1)
    )
    assert retries.filter(data__error__icontains="503").count() == 1
    assert len(server.requests) == 11
