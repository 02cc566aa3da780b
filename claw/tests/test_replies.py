"""claw.replies.generate in-process, against the local chat-completions server.

The same paths with real worker processes (streaming seen from outside, retries,
rate limit, kills) are in test_reply_worker.py.
"""

from __future__ import annotations

import time

import pytest

from claw import conversations, replies
from claw.llm import DeadlineExceeded, LLMRejected
from claw.models import Message
from claw.tests.conftest import sse
from knowledge import search
from knowledge import services as knowledge
from knowledge.tests.conftest import add_ready

pytestmark = pytest.mark.django_db


@pytest.fixture
def openai(settings, http_server):
    settings.LLM_PROVIDER = "openai"
    settings.LLM_BASE_URL = http_server.url + "/v1"
    settings.LLM_MODEL = "default-model"
    return http_server


def reply_in(conversation, content="What is CLAW?") -> Message:
    submission = conversations.post_message(conversation, content)
    return submission.assistant_message


def run(message: Message, deadline_in: float = 30) -> dict:
    return replies.generate(
        message.pk, started_at=time.time(), deadline=time.monotonic() + deadline_in
    )


def test_a_streamed_reply_is_stored_with_the_providers_usage_model_and_latency(
    alice, openai, no_publish
):
    conversation = conversations.create_conversation(
        alice, model="small-model", temperature=0.3
    )
    message = reply_in(conversation)
    openai.script.append(
        sse(
            "CLAW ",
            "runs ",
            "tasks.",
            usage={"prompt_tokens": 9, "completion_tokens": 3},
        )
    )

    result = run(message)

    message.refresh_from_db()
    assert result["status"] == "done" and result["truncated"] is False
    assert (message.status, message.content) == ("done", "CLAW runs tasks.")
    assert (message.prompt_tokens, message.completion_tokens) == (9, 3)
    assert message.tokens_estimated is False
    assert (message.provider, message.model) == ("openai", "test-model")
    assert message.latency_ms is not None and message.finished_at is not None
    sent = openai.requests[0]["body"]
    assert (sent["model"], sent["temperature"]) == ("small-model", 0.3)
    assert sent["messages"] == [{"role": "user", "content": "What is CLAW?"}]


def test_the_deadline_keeps_what_streamed_as_a_truncated_done_reply(
    alice, openai, no_publish
):
    message = reply_in(conversations.create_conversation(alice))
    openai.script.append(sse(*[f"w{n} " for n in range(40)], pause=0.05))

    result = run(message, deadline_in=0.6)

    message.refresh_from_db()
    assert result["stopped"] == "deadline"
    assert (message.status, message.truncated) == ("done", True)
    assert message.content.startswith("w0 w1 ") and "w39" not in message.content
    assert message.completion_tokens > 0 and message.tokens_estimated is True


def test_a_deadline_before_any_text_fails_the_run(alice, openai, no_publish):
    message = reply_in(conversations.create_conversation(alice))
    openai.script.append(sse("late", sleep=0.5))

    with pytest.raises(DeadlineExceeded):
        run(message, deadline_in=0.2)


def test_a_rejected_request_propagates_with_the_providers_message(
    alice, openai, no_publish
):
    message = reply_in(conversations.create_conversation(alice))
    openai.script.append(
        {"status": 400, "json": {"error": {"message": "context too long"}}}
    )

    with pytest.raises(LLMRejected, match="400: context too long"):
        run(message)


def test_the_extractive_provider_says_so_when_no_knowledge_base_is_attached(
    alice, no_publish, settings
):
    settings.LLM_PROVIDER = "extractive"
    message = reply_in(conversations.create_conversation(alice))

    run(message)

    message.refresh_from_db()
    assert message.status == "done" and message.provider == "extractive"
    assert "No retrieved passages" in message.content
    assert message.passages == []


def test_a_run_for_a_deleted_or_done_reply_changes_nothing(alice, no_publish):
    message = reply_in(conversations.create_conversation(alice))
    run(message)
    done = Message.objects.get(pk=message.pk)

    assert run(message)["status"] == "skipped"
    assert Message.objects.get(pk=message.pk).finished_at == done.finished_at
    Message.objects.filter(pk=message.pk).delete()
    assert run(message)["status"] == "skipped"


@pytest.fixture
def handbook(alice):
    search.clear_cache()  # a matrix cached by an earlier test must not answer
    kb = knowledge.create_knowledge_base(alice, name="Handbook")
    add_ready(
        kb,
        "Passwords",
        "To reset your password, open Settings and choose Reset password.",
    )
    add_ready(kb, "Cafeteria", "The office cafeteria serves lunch from noon to two.")
    yield kb
    search.clear_cache()


@pytest.fixture
def billing(alice):
    kb = knowledge.create_knowledge_base(alice, name="Billing")
    add_ready(kb, "Invoices", "Invoices are emailed on the first day of every month.")
    return kb


def test_the_extractive_reply_quotes_and_cites_the_best_passages_of_all_bases(
    alice, handbook, billing, no_publish, settings
):
    settings.LLM_PROVIDER = "extractive"
    settings.AI_PASSAGES = 2
    conversation = conversations.create_conversation(
        alice, knowledge_bases=[handbook, billing]
    )
    message = reply_in(conversation, "When are invoices emailed each month?")

    run(message)

    message.refresh_from_db()
    assert message.status == "done"
    assert message.content.startswith("Retrieved passages (quoted from the knowledge")
    assert (
        "[1] Invoices are emailed on the first day of every month." in message.content
    )
    assert "Sources:\n[1] Invoices\n[2] " in message.content
    cited = [
        (c["n"], c["knowledge_base"], c["document_title"]) for c in message.passages
    ]
    assert len(cited) == 2  # the best two over both knowledge bases
    assert cited[0] == (1, billing.pk, "Invoices")
    assert message.passages[0]["score"] >= message.passages[1]["score"]


def test_the_openai_provider_gets_the_passages_to_cite(
    alice, handbook, openai, no_publish
):
    conversation = conversations.create_conversation(alice, knowledge_bases=[handbook])
    message = reply_in(conversation, "How do I reset my password?")
    openai.script.append(sse("Open Settings [1]."))

    run(message)

    system = openai.requests[0]["body"]["messages"][0]
    assert system["role"] == "system"
    assert "[1] Passwords\nTo reset your password" in system["content"]
    message.refresh_from_db()
    assert message.content == "Open Settings [1]."
    assert message.passages[0]["document_title"] == "Passwords"


@pytest.fixture
def chinese_handbook(alice):
    search.clear_cache()
    kb = knowledge.create_knowledge_base(alice, name="手册")
    add_ready(kb, "密码", "如需重置密码，请打开设置并选择重置密码。")
    add_ready(kb, "食堂", "公司食堂中午十二点到两点供应午餐。")
    yield kb
    search.clear_cache()


def test_the_extractive_reply_answers_in_the_questions_language_with_its_latency(
    alice, chinese_handbook, handbook, no_publish, settings
):
    settings.LLM_PROVIDER = "extractive"
    chinese = conversations.create_conversation(
        alice, knowledge_bases=[chinese_handbook]
    )
    english = conversations.create_conversation(alice, knowledge_bases=[handbook])
    question = reply_in(chinese, "怎么重置密码？")
    nothing = reply_in(conversations.create_conversation(alice), "食堂几点开门？")
    asked = reply_in(english, "How do I reset my password?")

    for message in (question, nothing, asked):
        run(message)
        message.refresh_from_db()
        assert message.status == "done", message.error
        assert message.latency_ms and message.latency_ms > 0

    assert question.content.startswith("检索到的段落（引自知识库原文，并非生成）：")
    assert "\n来源：\n[1] 密码" in question.content
    for english_word in ("Retrieved", "Sources", "passages"):
        assert english_word not in question.content
    assert nothing.content.startswith("没有与这个问题相关的检索段落")
    assert asked.content.startswith("Retrieved passages (quoted from the knowledge")
    assert "\nSources:\n[1] Passwords" in asked.content
