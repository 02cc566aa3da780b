"""Keeps the AI-reply benchmark honest: its local model server speaks the protocol
claw.llm reads, streams over the delay it is given, and serves streams at once."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from bench import stack
from claw.llm import Completion, OpenAIProvider


def test_the_benchmarks_model_server_streams_an_answer_over_its_delay():
    model, url = stack.fake_model(delay=0.4, pieces=4)
    with model:
        provider = OpenAIProvider(base_url=url, api_key="", model="m", timeout=5)

        def ask() -> tuple[Completion, float]:
            completion, started = Completion(), time.monotonic()
            list(
                provider.stream(
                    [{"role": "user", "content": "hi"}], completion=completion
                )
            )
            return completion, time.monotonic() - started

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: ask(), range(8)))
        stats = asyncio.run(stack.request(url.removesuffix("/v1"), "GET", "/stats"))[1]

    for completion, elapsed in answers:
        assert completion.text == "word0 word1 word2 word3 "
        assert (completion.completion_tokens, completion.estimated) == (4, False)
        assert 0.4 <= elapsed < 3
    # eight at once, served side by side rather than one after another
    assert stats["requests"] == 8 and stats["peak"] >= 2 and stats["active"] == 0
