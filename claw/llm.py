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

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.conf import settings


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
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded("deadline passed while streaming the reply")


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


class ExtractiveProvider(Provider):
    """Offline: quotes the best passages with numbered citations."""

    name = "extractive"

    def stream(self, messages, *, passages=(), completion, deadline=None):
        completion.model = "extractive"
        prompt = "\n".join(m["content"] for m in messages)
        completion.prompt_tokens = estimate_tokens(prompt)
        if passages:
            pieces = [
                "Retrieved passages (quoted from the knowledge base, not generated):\n"
            ]
            for i, p in enumerate(passages, 1):
                pieces.append(f"\n[{i}] {p.text.strip()}\n")
            pieces.append("\nSources:\n")
            for i, p in enumerate(passages, 1):
                pieces.append(f"[{i}] {p.title}\n")
        else:
            pieces = [
                "No retrieved passages match this question "
                "(the extractive provider only quotes attached knowledge bases)."
            ]
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
        messages = self.with_passages(messages, passages)
        completion.model = self.model
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        usage = None
        try:
            with (
                httpx.Client(timeout=self.timeout) as client,
                client.stream("POST", self._url(), json=body, headers=headers) as resp,
            ):
                if resp.status_code >= 400:
                    resp.read()
                    raise _http_error(resp)
                for line in resp.iter_lines():
                    _check_deadline(deadline)
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        event = json.loads(data)
                    except ValueError as exc:
                        raise LLMUnavailable(
                            f"malformed stream event: {data[:200]}"
                        ) from exc
                    if event.get("error"):
                        raise LLMUnavailable(
                            _message(event) or "provider error in stream"
                        )
                    usage = event.get("usage") or usage
                    completion.model = event.get("model") or completion.model
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            completion.text += piece
                            completion.pieces.append(piece)
                            yield piece
        except httpx.TimeoutException as exc:
            raise LLMUnavailable(
                f"LLM provider timed out after {self.timeout:g}s"
            ) from exc
        except httpx.TransportError as exc:
            raise LLMUnavailable(f"LLM provider unreachable: {exc}") from exc
        if usage:
            completion.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion.completion_tokens = int(usage.get("completion_tokens") or 0)
            completion.estimated = False
        else:
            completion.prompt_tokens = estimate_tokens(
                "\n".join(m["content"] for m in messages)
            )
            completion.completion_tokens = estimate_tokens(completion.text)


def _message(payload: Any) -> str:
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(payload)


def _http_error(resp: httpx.Response) -> LLMError:
    try:
        detail = _message(resp.json())
    except ValueError:
        detail = resp.text[:500]
    msg = f"LLM provider answered {resp.status_code}: {detail}"
    if resp.status_code == 429 or resp.status_code >= 500:
        return LLMUnavailable(msg)
    return LLMRejected(msg)


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
