"""claw.generate_ai_response in real worker processes.

First the whole path with the session's shared worker and the default extractive
provider: API, vectorized knowledge base, reply citing its passages. Then against
the local chat-completions server: streaming seen from outside, retries,
permanent errors, the soft time limit, cancel, and a worker process killed
mid-reply. One worker (prefork, one process) on its own queue serves those, so
the shared worker never takes them; its LLM_* settings point at the module's
server. Short limits keep every test to a few seconds.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from django_celery_results.models import TaskResult
from rest_framework.test import APIClient

from claw import conversations
from claw.models import Message
from claw.tests.conftest import ScriptedServer, sse
from knowledge import services as knowledge
from knowledge.models import Document
from tasks_app import services
from tasks_app.models import TaskRecord
from tests.harness import CeleryProcess, wait_for
from tests.test_smoke_embedded import manage

pytestmark = pytest.mark.worker
QUEUE = "conv_llm"
DEADLINE = 4  # AI_REPLY_DEADLINE of the module's worker
# Seconds, in the one test that reaches it: below DEADLINE, which would otherwise
# end the quiet stream first (claw.llm cuts streams at the deadline).
SOFT_LIMIT = 2


@pytest.fixture(scope="module")
def llm_server():
    with ScriptedServer() as server:
        yield server


@pytest.fixture(scope="module")
def llm_worker(worker_env, artifacts_dir, llm_server):
    from claw.celery import app

    env = {
        **worker_env,
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": llm_server.url + "/v1",
        "LLM_MODEL": "test-model",
        "AI_RATE_LIMIT": "",  # no limit here; test_reply_rate_limit covers it
        "AI_RETRY_BACKOFF": "0.2",
        "AI_REPLY_DEADLINE": str(DEADLINE),
        "AI_STREAM_SAVE_INTERVAL": "0.2",
    }
    worker = CeleryProcess(
        "worker", env, ["-Q", QUEUE, "-c", "1"], artifacts_dir / "worker-llm.log"
    )
    with worker.running(app):
        yield worker


@pytest.fixture
def server(llm_server, llm_worker, transactional_db):
    llm_server.script.clear()
    llm_server.requests.clear()
    return llm_server


def ask(user, content="What is CLAW?") -> Message:
    conversation = conversations.create_conversation(user)
    submission = conversations.post_message(conversation, content, queue=QUEUE)
    return submission.assistant_message


def wait_status(message: Message, *statuses: str, timeout: float = 30) -> Message:
    def reached():
        message.refresh_from_db()
        return message.status in statuses

    wait_for(reached, timeout, interval=0.05, message=f"reply {statuses}")
    return message


def wait_record(message: Message, state: str, timeout: float = 15) -> TaskRecord:
    def reached():
        record = TaskRecord.objects.get(pk=message.task_id)
        return record if record.state == state else None

    return wait_for(reached, timeout, message=f"task {state}")


def kinds(record: TaskRecord) -> list[str]:
    return list(record.events.values_list("kind", flat=True))


def test_a_message_in_a_conversation_with_a_knowledge_base_gets_a_cited_reply(
    transactional_db, celery_worker, alice
):
    # given a knowledge base whose document the worker vectorizes
    kb = knowledge.create_knowledge_base(alice, name="Ops handbook")
    document = knowledge.add_document(
        kb,
        title="Restarting workers",
        content="To restart a worker pool, open the Workers page and press "
        "Restart. Queued tasks wait and nothing is lost.",
    )
    wait_for(
        lambda: Document.objects.get(pk=document.pk).status == "ready",
        30,
        message="the document to be vectorized",
    )
    api = APIClient()
    api.force_authenticate(alice)
    conversation = api.post(
        "/api/v1/conversations/", {"knowledge_bases": [kb.pk]}, format="json"
    ).json()

    # when a question is posted
    response = api.post(
        f"/api/v1/conversations/{conversation['id']}/messages/",
        {"content": "How do I restart a worker pool?"},
        format="json",
    )

    # then the assistant reply is done and quotes and cites the passage
    assert response.status_code == 202
    message = Message.objects.get(pk=response.json()["assistant_message"]["id"])
    wait_status(message, "done", "failed")
    assert message.status == "done", message.error
    assert "Retrieved passages" in message.content
    assert "open the Workers page and press Restart" in message.content
    assert "Sources:\n[1] Restarting workers" in message.content
    assert message.passages[0]["document"] == document.pk
    assert (message.provider, message.completion_tokens > 0) == ("extractive", True)
    record = wait_record(message, "SUCCESS")
    assert record.queue == "ai_high_priority"
    polled = api.get(f"/api/v1/messages/{message.pk}/").json()
    assert (polled["status"], polled["task_state"]) == ("done", "SUCCESS")


def test_streaming_fills_the_reply_progressively(server, alice):
    pieces = [f"piece{n} " for n in range(10)]
    server.script.append(
        sse(*pieces, pause=0.15, usage={"prompt_tokens": 7, "completion_tokens": 10})
    )
    message = ask(alice)

    # seen from outside while the worker streams: generating, with part of the text
    wait_for(
        lambda: Message.objects.filter(
            pk=message.pk, status="generating", content__startswith="piece0"
        ).exists(),
        20,
        interval=0.05,
        message="partial content",
    )
    partial = Message.objects.get(pk=message.pk).content
    wait_status(message, "done")

    assert partial != message.content and message.content.startswith(partial)
    assert message.content == "".join(pieces)
    assert (message.prompt_tokens, message.completion_tokens) == (7, 10)
    assert message.truncated is False and message.model == "test-model"
    record = wait_record(message, "SUCCESS")
    assert "progress" in kinds(record)
    assert Message.objects.filter(role="assistant").count() == 1


def test_a_429_then_a_200_retries_and_succeeds(server, alice):
    server.script += [
        {"status": 429, "json": {"error": {"message": "slow down"}}},
        sse("Hello after the retry."),
    ]
    message = ask(alice)

    wait_status(message, "done")

    record = wait_record(message, "SUCCESS")
    assert message.content == "Hello after the retry." and message.error == ""
    assert len(server.requests) == 2
    assert kinds(record).count("retry") == 1
    retry = record.events.get(kind="retry")
    assert "429" in retry.data["error"]


def test_a_400_fails_at_once_with_the_providers_message(server, alice):
    server.script.append(
        {"status": 400, "json": {"error": {"message": "model does not exist"}}}
    )
    message = ask(alice)

    wait_status(message, "failed")

    record = wait_record(message, "FAILURE")
    assert "400: model does not exist" in message.error
    assert "model does not exist" in record.error
    assert len(server.requests) == 1 and "retry" not in kinds(record)


def test_transient_errors_fail_the_reply_after_three_retries(server, alice):
    server.script += [{"status": 503, "json": {"error": "overloaded"}}] * 4
    message = ask(alice)

    wait_status(message, "failed")

    record = wait_record(message, "FAILURE")
    assert len(server.requests) == 4
    assert kinds(record).count("retry") == 3
    assert "503" in message.error


ASK_WITH_SHORT_LIMITS = """
from django.contrib.auth import get_user_model
from claw import conversations
user = get_user_model().objects.get(pk={user})
conversation = conversations.create_conversation(user)
sub = conversations.post_message(conversation, "q", queue="{queue}")
print(sub.assistant_message.pk)
"""


def test_the_soft_time_limit_keeps_what_streamed_as_a_truncated_reply(
    server, alice, worker_env
):
    # A message carries the time limits of the process that published it, read
    # from the same AI_REPLY_* variables as every process of a deployment; this
    # one is published by a process configured with short ones.
    env = {
        **worker_env,
        "AI_REPLY_SOFT_TIME_LIMIT": str(SOFT_LIMIT),
        "AI_REPLY_TIME_LIMIT": str(SOFT_LIMIT + 6),
    }
    # Two pieces, then the provider goes quiet: the worker blocks in a read until
    # the soft time limit interrupts it, before the deadline would cut it.
    server.script.append(
        sse("Partial ", "answer", stall={"after": 2, "seconds": SOFT_LIMIT + 6})
    )
    out = manage(
        env, "shell", "-c", ASK_WITH_SHORT_LIMITS.format(user=alice.pk, queue=QUEUE)
    )
    message = Message.objects.get(pk=int(out.split()[-1]))

    wait_status(message, "done", "failed", timeout=SOFT_LIMIT + 15)

    record = wait_record(message, "SUCCESS")
    assert (message.status, message.truncated) == ("done", True)
    assert message.content == "Partial answer"
    stored = TaskResult.objects.get(task_id=record.celery_id)
    assert json.loads(stored.result)["stopped"] == "soft_time_limit"


def test_cancelling_mid_stream_stops_the_reply_and_marks_it_failed(server, alice):
    server.script.append(sse(*[f"w{n} " for n in range(20)], pause=0.15))
    message = ask(alice)
    wait_for(
        lambda: Message.objects.filter(pk=message.pk).exclude(content="").exists(),
        20,
        interval=0.05,
        message="streaming to start",
    )

    services.cancel(TaskRecord.objects.get(pk=message.task_id))

    wait_status(message, "failed")
    wait_record(message, "REVOKED")
    assert "Cancelled" in message.error and message.truncated is True
    assert "w19" not in message.content


def test_killing_the_worker_process_mid_reply_leaves_exactly_one_reply(
    server, alice, llm_worker
):
    server.script += [
        sse(*[f"slow{n} " for n in range(15)], pause=0.2),
        sse("The whole answer."),
    ]
    message = ask(alice)
    wait_for(
        lambda: Message.objects.filter(
            pk=message.pk, content__contains="slow1"
        ).exists(),
        20,
        interval=0.05,
        message="streaming to start",
    )
    (child,) = llm_worker.child_pids()  # -c 1: the process writing this reply

    os.kill(child, signal.SIGKILL)

    wait_status(message, "done")
    record = wait_record(message, "SUCCESS")
    assert message.content == "The whole answer."  # rewritten, not appended
    assert Message.objects.filter(role="assistant").count() == 1
    assert Message.objects.filter(conversation=message.conversation).count() == 2
    assert record.deliveries == 2 and len(server.requests) == 2
