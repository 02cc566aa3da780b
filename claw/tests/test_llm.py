"""LLM providers against a real local HTTP server speaking chat completions (SSE)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from claw.llm import (
    Completion,
    DeadlineExceeded,
    ExtractiveProvider,
    LLMRejected,
    LLMUnavailable,
    OpenAIProvider,
    Passage,
    StreamCutter,
    estimate_tokens,
)
from claw.tests.conftest import chunk
from tasks_app.httpclient import shared_client

MESSAGES = [{"role": "user", "content": "What is CLAW?"}]


def provider(server, timeout=5.0):
    return OpenAIProvider(
        base_url=server.url + "/v1", api_key="k", model="m", timeout=timeout
    )


def test_openai_provider_streams_sse_pieces_and_uses_the_providers_usage(http_server):
    http_server.script.append(
        {
            "sse": [
                chunk("Hel"),
                chunk("lo"),
                {
                    "model": "test-model",
                    "choices": [],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 2},
                },
            ]
        }
    )
    completion = Completion()
    pieces = list(provider(http_server).stream(MESSAGES, completion=completion))
    assert pieces == ["Hel", "lo"]
    assert completion.text == "Hello"
    assert (completion.prompt_tokens, completion.completion_tokens) == (11, 2)
    assert completion.estimated is False
    assert completion.model == "test-model"
    request = http_server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["stream"] is True
    assert request["headers"]["Authorization"] == "Bearer k"


def test_openai_provider_estimates_tokens_without_usage_and_sends_passages(http_server):
    http_server.script.append({"sse": [chunk("Answer [1]")]})
    completion = Completion()
    passages = [Passage(title="Guide", text="CLAW runs tasks.")]
    list(
        provider(http_server).stream(MESSAGES, passages=passages, completion=completion)
    )
    assert completion.estimated is True
    assert completion.completion_tokens == estimate_tokens("Answer [1]")
    system = http_server.requests[0]["body"]["messages"][0]
    assert system["role"] == "system" and "CLAW runs tasks." in system["content"]


def test_a_429_is_unavailable_and_the_next_attempt_succeeds(http_server):
    http_server.script += [
        {"status": 429, "json": {"error": {"message": "slow down"}}},
        {"sse": [chunk("ok")]},
    ]
    with pytest.raises(LLMUnavailable, match="429"):
        list(provider(http_server).stream(MESSAGES, completion=Completion()))
    completion = Completion()
    list(provider(http_server).stream(MESSAGES, completion=completion))
    assert completion.text == "ok"


def test_a_5xx_is_unavailable(http_server):
    http_server.script.append({"status": 503, "json": {"error": "overloaded"}})
    with pytest.raises(LLMUnavailable, match="503"):
        list(provider(http_server).stream(MESSAGES, completion=Completion()))


def test_a_400_is_rejected_with_the_providers_message(http_server):
    http_server.script.append(
        {"status": 400, "json": {"error": {"message": "model 'm' does not exist"}}}
    )
    with pytest.raises(LLMRejected, match="model 'm' does not exist"):
        list(provider(http_server).stream(MESSAGES, completion=Completion()))
    assert len(http_server.requests) == 1


def test_a_slow_provider_times_out_as_unavailable(http_server):
    http_server.script.append({"sleep": 1.5, "sse": [chunk("late")]})
    started = time.monotonic()
    with pytest.raises(LLMUnavailable, match="timed out"):
        list(
            provider(http_server, timeout=0.3).stream(MESSAGES, completion=Completion())
        )
    assert time.monotonic() - started < 1.4


def test_an_unreachable_provider_is_unavailable():
    p = OpenAIProvider(
        base_url="http://127.0.0.1:9/v1", api_key="", model="m", timeout=1
    )
    with pytest.raises(LLMUnavailable, match="unreachable"):
        list(p.stream(MESSAGES, completion=Completion()))


def test_the_deadline_stops_a_stream_midway(http_server):
    http_server.script.append(
        {"sse": [chunk("a"), chunk("b"), chunk("c")], "pause": 0.3}
    )
    completion = Completion()
    with pytest.raises(DeadlineExceeded):
        for _ in provider(http_server).stream(
            MESSAGES, completion=completion, deadline=time.monotonic() + 0.4
        ):
            pass
    assert completion.text in ("a", "ab")


def test_extractive_provider_quotes_and_cites_passages_in_pieces():
    passages = [
        Passage(title="Install guide", text="Run make up."),
        Passage(title="FAQ", text="Workers retry."),
    ]
    completion = Completion()
    pieces = list(
        ExtractiveProvider().stream(MESSAGES, passages=passages, completion=completion)
    )
    assert len(pieces) > 2
    assert completion.text.startswith("Retrieved passages")
    assert "not generated" in completion.text
    assert "[1] Run make up." in completion.text and "[2] FAQ" in completion.text
    assert completion.completion_tokens == estimate_tokens(completion.text)


def test_extractive_provider_says_so_when_nothing_matches():
    completion = Completion()
    list(ExtractiveProvider().stream(MESSAGES, completion=completion))
    assert "No retrieved passages" in completion.text


@pytest.mark.parametrize("chunked", [False, True], ids=["read-to-close", "chunked"])
def test_a_stream_that_goes_quiet_is_cut_at_the_deadline(http_server, chunked):
    # Four pieces over 1.2 s, then silence. No line arrives, so no per-line check
    # runs, and the read timeout (the time left when the request started, 1.5 s)
    # would end the read only at 2.7 s: the cutter ends it at the deadline (what
    # the soft time limit does on prefork).
    pieces = [chunk(p) for p in ("a", "b", "c", "d", "never")]
    http_server.script.append(
        {"sse": pieces, "pause": 0.3, "stall": {"after": 4, "seconds": 5}}
        | {"chunked": chunked}
    )
    completion = Completion()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        for _ in provider(http_server).stream(
            MESSAGES, completion=completion, deadline=started + 1.5
        ):
            pass
    assert completion.text == "abcd"
    assert 1.5 <= time.monotonic() - started < 2.4


def test_waiting_for_the_first_byte_ends_at_the_deadline_not_the_timeout(http_server):
    http_server.script.append({"sleep": 3, "sse": [chunk("late")]})
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        list(
            provider(http_server, timeout=30).stream(
                MESSAGES, completion=Completion(), deadline=started + 0.4
            )
        )
    assert time.monotonic() - started < 1.5


def test_a_deadline_already_past_never_calls_the_provider(http_server):
    with pytest.raises(DeadlineExceeded):
        list(
            provider(http_server).stream(
                MESSAGES, completion=Completion(), deadline=time.monotonic() - 1
            )
        )
    assert http_server.requests == []


def test_a_stream_that_ends_in_time_is_never_cut_afterwards():
    # given two watched sockets, one finished (forgotten) before its deadline
    cutter = StreamCutter()
    done_reader, done_writer = socket.socketpair()
    late_reader, late_writer = socket.socketpair()
    now = time.monotonic()
    cutter.forget(cutter.watch(now + 0.1, done_reader))
    cutter.watch(now + 0.2, late_reader)

    # when both deadlines have passed
    late_reader.settimeout(3)
    assert late_reader.recv(10) == b""  # the blocked read returned: cut

    # then the forgotten one still works
    done_writer.sendall(b"ok")
    assert done_reader.recv(10) == b"ok"
    for sock in (done_reader, done_writer, late_reader, late_writer):
        sock.close()


def test_threads_share_one_http_client_per_process():
    clients = set()

    def grab():
        clients.add(id(shared_client()))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clients == {id(shared_client())}
