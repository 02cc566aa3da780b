"""LLM providers behind one small interface.

A provider turns a list of chat messages (plus retrieved passages) into a stream of
text pieces, then reports token counts. Two providers:

* ``extractive`` (default, offline): answers with the most relevant knowledge-base
  passages, cited and labelled as retrieved passages, not generated text.
* ``openai``: any OpenAI-compatible ``/v1/chat/completions`` with ``stream=true``.

Errors: ``LLMUnavailable`` (timeouts, connection errors, 429, 5xx; worth retrying)
and ``LLMRejected`` (any other 4xx; the provider's message; not retried).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.conf import settings

from tasks_app import httpclient
from tasks_app.httpclient import shared_client


class LLMError(Exception):
    pass


class LLMUnavailable(LLMError):
    """Transient: the provider could not answer now (retry later)."""


class LLMRejected(LLMError):
    """Permanent: the provider refused the request; the message says why."""


class DeadlineExceeded(LLMError):
    """The caller's deadline passed while streaming."""


@dataclass
class Passage:
    title: str
    text: str
    score: float = 0.0
    ref: str = ""


@dataclass
class Completion:
    """Filled in while the stream is consumed."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    estimated: bool = True
    pieces: list[str] = field(default_factory=list)


def estimate_tokens(text: str) -> int:
    """About four characters per token; never zero for non-empty text."""
    return (len(text) + 3) // 4 if text else 0


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded("deadline passed while streaming the reply")


class StreamCutter:
    """Shuts down the socket of a stream when its deadline passes.

    The deadline is checked at every streamed line, but a provider that goes
    quiet leaves the thread blocked in a read where no check runs. On prefork the
    soft time limit interrupts that read with a signal; no other pool has one,
    and a thread cannot be interrupted from outside. Shutting its socket down
    can: the blocked read returns at once, and the stream ends as a deadline.
    One daemon thread per process serves every stream (started on first use, in
    the process that streams; a forked child starts its own).
    """

    def __init__(self):
        self._ids = itertools.count()
        self.reset()
        # A lock held by another thread at fork time would stay held in the child.
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._sockets: dict[int, socket.socket] = {}
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, sock: socket.socket) -> int:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="claw-stream-cutter", daemon=True
                )
                self._thread.start()
            token = next(self._ids)
            self._sockets[token] = sock
            heapq.heappush(self._heap, (deadline, token))
            self._cond.notify()
        return token

    def forget(self, token: int) -> None:
        with self._cond:
            self._sockets.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._sockets:
                    heapq.heappop(self._heap)  # finished before its deadline
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                # Under the lock: once forget() returns, the socket is either
                # shut down already or never will be, so a connection handed back
                # to the pool is never cut under its next request.
                _shut_down(self._sockets.pop(token))


def _shut_down(sock: socket.socket) -> None:
    # socket.socket's own shutdown, also for an ssl.SSLSocket: its override
    # drops the SSL object that the blocked reader is still using.
    with contextlib.suppress(OSError):  # already closed by its reader
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_cutter = StreamCutter()


class Provider:
    name = "base"

    def stream(
        self,
        messages: list[dict[str, str]],
        *,
        passages: list[Passage] = (),
        completion: Completion,
        deadline: float | None = None,
    ) -> Iterator[str]:
        raise NotImplementedError


# What the extractive provider writes around its quotes, in the question's
# language (language_of); English for anything else.
EXTRACTIVE_LABELS = {
    "en": {
        "intro": "Retrieved passages (quoted from the knowledge base, not generated):\n",
        "sources": "\nSources:\n",
        "nothing": "No retrieved passages match this question "
        "(the extractive provider only quotes attached knowledge bases).",
    },
    "zh": {
        "intro": "检索到的段落（引自知识库原文，并非生成）：\n",
        "sources": "\n来源：\n",
        "nothing": "没有与这个问题相关的检索段落（extractive 提供者只引用所附知识库中的原文）。",
    },
}
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def language_of(text: str) -> str:
    """ "zh" for a question written in Chinese (any Han character: a Chinese
    question often carries English names), else "en"."""
    return "zh" if _HAN.search(text) else "en"


def question_of(messages: list[dict[str, str]]) -> str:
    return next(
        (m["content"] for m in reversed(messages) if m.get("role") == "user"), ""
    )


class ExtractiveProvider(Provider):
    """Offline: quotes the best passages with numbered citations, labelled in the
    question's language."""

    name = "extractive"

    def stream(self, messages, *, passages=(), completion, deadline=None):
        completion.model = "extractive"
        prompt = "\n".join(m["content"] for m in messages)
        completion.prompt_tokens = estimate_tokens(prompt)
        labels = EXTRACTIVE_LABELS[language_of(question_of(messages))]
        if passages:
            pieces = [labels["intro"]]
            for i, p in enumerate(passages, 1):
                pieces.append(f"\n[{i}] {p.text.strip()}\n")
            pieces.append(labels["sources"])
            for i, p in enumerate(passages, 1):
                pieces.append(f"[{i}] {p.title}\n")
        else:
            pieces = [labels["nothing"]]
        for piece in pieces:
            _check_deadline(deadline)
            completion.text += piece
            completion.pieces.append(piece)
            yield piece
        completion.completion_tokens = estimate_tokens(completion.text)


class OpenAIProvider(Provider):
    """OpenAI-compatible chat completions over SSE (stream=true)."""

    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float | None = None,
        temperature: float | None = None,
    ):
        self.base_url = (base_url or settings.LLM_BASE_URL).rstrip("/")
        self.api_key = settings.LLM_API_KEY if api_key is None else api_key
        self.model = model or settings.LLM_MODEL
        self.timeout = float(timeout or settings.LLM_TIMEOUT)
        self.temperature = temperature

    def _url(self) -> str:
        base = self.base_url
        if not base.endswith("/v1"):
            base += "/v1"
        return base + "/chat/completions"

    @staticmethod
    def with_passages(messages, passages) -> list[dict[str, str]]:
        if not passages:
            return list(messages)
        context = "\n\n".join(
            f"[{i}] {p.title}\n{p.text}" for i, p in enumerate(passages, 1)
        )
        system = {
            "role": "system",
            "content": "Answer using these passages and cite them as [n]:\n\n"
            + context,
        }
        return [system, *messages]

    def stream(self, messages, *, passages=(), completion, deadline=None):
        """Stream the answer; every wait ends by the deadline (when one is given).

        Connecting and waiting for the headers have a timeout of at most the
        time left; after that the StreamCutter ends a stream that goes quiet, and
        every line checks the deadline. So a reply never waits past its deadline
        for the provider, on any pool.
        """
        messages = self.with_passages(messages, passages)
        completion.model = self.model
        timeout = self.timeout
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise DeadlineExceeded("deadline passed before the provider answered")
        usage, finished = None, False
        try:
            with shared_client().stream(
                "POST",
                self._url(),
                json=self._body(messages),
                headers=self._headers(),
                timeout=timeout,
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _http_error(resp)
                with _cut_at(deadline, resp):
                    for event in _events(resp, deadline):
                        if event is DONE:
                            finished = True
                            break
                        usage = event.get("usage") or usage
                        completion.model = event.get("model") or completion.model
                        for piece in _pieces(event):
                            completion.text += piece
                            completion.pieces.append(piece)
                            yield piece
        except httpx.TimeoutException as exc:
            if timeout < self.timeout:  # the time left was the limit
                raise DeadlineExceeded(
                    "deadline passed waiting for the provider"
                ) from exc
            raise LLMUnavailable(
                f"LLM provider timed out after {self.timeout:g}s"
            ) from exc
        except httpx.TransportError as exc:
            _check_deadline(deadline)  # cut at the deadline
            raise LLMUnavailable(f"LLM provider unreachable: {exc}") from exc
        if not finished:
            # A stream read until the server closes it also just ends when cut.
            _check_deadline(deadline)
        self._count_tokens(completion, messages, usage)

    def _body(self, messages) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    @staticmethod
    def _count_tokens(completion: Completion, messages, usage: dict | None) -> None:
        if usage:
            completion.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion.completion_tokens = int(usage.get("completion_tokens") or 0)
            completion.estimated = False
        else:
            completion.prompt_tokens = estimate_tokens(
                "\n".join(m["content"] for m in messages)
            )
            completion.completion_tokens = estimate_tokens(completion.text)


DONE = object()  # the stream's "data: [DONE]"


def _events(resp: httpx.Response, deadline: float | None) -> Iterator[Any]:
    """The stream's events (dicts), then DONE; the deadline is checked per line."""
    for line in resp.iter_lines():
        _check_deadline(deadline)
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            yield DONE
            return
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise LLMUnavailable(f"malformed stream event: {data[:200]}") from exc
        if event.get("error"):
            raise LLMUnavailable(
                httpclient.error_message(event) or "provider error in stream"
            )
        yield event


def _pieces(event: dict) -> Iterator[str]:
    for choice in event.get("choices") or []:
        piece = (choice.get("delta") or {}).get("content") or ""
        if piece:
            yield piece


@contextlib.contextmanager
def _cut_at(deadline: float | None, resp: httpx.Response) -> Iterator[None]:
    """Watch the response's socket until the block ends (StreamCutter)."""
    stream = resp.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if deadline is None or sock is None:
        yield
        return
    token = _cutter.watch(deadline, sock)
    try:
        yield
    finally:
        _cutter.forget(token)


def _http_error(resp: httpx.Response) -> LLMError:
    return httpclient.status_error(
        resp, "LLM provider", transient=LLMUnavailable, permanent=LLMRejected
    )


PROVIDERS = {"extractive": ExtractiveProvider, "openai": OpenAIProvider}


def get_provider(
    name: str | None = None,
    *,
    model: str | None = None,
    temperature: float | None = None,
) -> Provider:
    """The provider by name (blank: LLM_PROVIDER); model and temperature apply to
    providers that generate (the extractive one has neither)."""
    name = name or settings.LLM_PROVIDER
    if name not in PROVIDERS:
        raise LLMRejected(f"Unknown LLM provider {name!r}")
    if name == OpenAIProvider.name:
        return OpenAIProvider(model=model or None, temperature=temperature)
    return PROVIDERS[name]()
