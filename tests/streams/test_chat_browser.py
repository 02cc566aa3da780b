"""The /chat/ page in headless Chromium against a real uvicorn process, a real
worker and the scripted model server: the reply appears on the page while it is
being written, and a failed reply is retried from the page. Screenshots go to
TEST_ARTIFACTS/screenshots."""

from __future__ import annotations

import pytest

from claw import conversations
from claw.models import Message
from claw.tests.conftest import sse
from tests.browser.test_admin_browser import shot
from tests.streams.conftest import AsgiServer
from tests.streams.test_reply_stream import ANSWER, PIECES

pytestmark = [pytest.mark.worker, pytest.mark.browser]


@pytest.fixture(scope="session")
def chat_server(worker_env, artifacts_dir):
    server = AsgiServer(
        {**worker_env, "DJANGO_SETTINGS_MODULE": "tests.streams.chat_settings"},
        artifacts_dir / "uvicorn-chat.log",
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_the_chat_page_shows_a_reply_while_it_is_written(
    alice, llm, chat_server, browser_page
):
    conversations.create_conversation(alice, title="Streams", provider="openai")
    llm.script.append(sse(*PIECES, pause=0.3))
    page = browser_page
    base = chat_server.url
    page.goto(f"{base}/chat/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-pass-1")
    page.click("button[type=submit]")
    page.wait_for_selector("#conversations a.current")
    page.fill("#send textarea", "What is CLAW?")
    page.click("#send button")
    # partial text on the page, while the worker is still writing it
    page.wait_for_function(
        "() => { const t = document.querySelector('.msg.assistant.streaming .text');"
        " return t && t.textContent.length > 0; }"
    )
    partial = page.inner_text(".msg.assistant.streaming .text")
    reply = Message.objects.get(role="assistant", conversation__owner=alice)
    assert reply.status == "generating"
    assert 0 < len(partial) < len(ANSWER) and ANSWER.startswith(partial)
    shot(page, "chat-01-partial")
    page.wait_for_selector(".msg.assistant[data-ended=true]")
    assert page.inner_text(".msg.assistant .text") == ANSWER
    assert "tokens" in page.inner_text(".msg.assistant .meta")
    shot(page, "chat-02-done")

    # a reply the model refuses fails; Retry on the page writes it again
    llm.script.append({"status": 400, "json": {"error": {"message": "refused"}}})
    page.fill("#send textarea", "And again?")
    page.click("#send button")
    page.wait_for_selector(".msg.assistant.failed button.retry")
    assert "refused" in page.inner_text(".msg.assistant.failed .meta")
    shot(page, "chat-03-failed")
    llm.script.append(sse(*PIECES, pause=0.05))
    page.click(".msg.assistant.failed button.retry")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.msg.assistant')].length === 2 &&"
        " !document.querySelector('.msg.assistant.failed') &&"
        " [...document.querySelectorAll('.msg.assistant')].every("
        "   m => m.dataset.ended === 'true')"
    )
    texts = page.locator(".msg.assistant .text").all_inner_texts()
    assert texts == [ANSWER, ANSWER]
    shot(page, "chat-04-retried")
