"""One HTTP client per process for model and embedding servers, shared by threads,
and the one reading of their error answers (retry later, or give up).

A new ``httpx.Client`` per call builds an SSL context (it parses the CA bundle:
27 ms of CPU on the benchmark machine, more than the rest of a reply) and opens
a new connection; at dozens of replies a second on one threads-pool worker that
was most of its CPU. A client is
safe to share between threads; it is not safe to share across a fork, so each
process (prefork children included) builds its own on first use. Callers pass
their own timeout per request.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import httpx

_lock = threading.Lock()
_clients: dict[int, httpx.Client] = {}

# No cap on connections: the pool's thread count bounds them, and a cap would
# make threads wait for each other (httpx's default is 100, keep-alive 20).
LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=256)


def shared_client() -> httpx.Client:
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        with _lock:
            client = _clients.get(pid)
            if client is None:
                _clients.clear()  # a parent's client: its sockets are not ours
                client = _clients[pid] = httpx.Client(limits=LIMITS)
    return client


def is_transient(status_code: int) -> bool:
    """An answer worth another try later: rate limited (429) or a server error."""
    return status_code == 429 or status_code >= 500


def error_detail(response: httpx.Response) -> str:
    """The server's own message (error_message), or the start of the body when it
    is not JSON."""
    try:
        payload: Any = response.json()
    except ValueError:
        return response.text[:500]
    return error_message(payload)


def error_message(payload: Any) -> str:
    """The message of an OpenAI-style error, {"error": {"message": ...}}."""
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    return str(payload)


def status_error(
    response: httpx.Response,
    what: str,
    *,
    transient: type[Exception],
    permanent: type[Exception],
) -> Exception:
    """The exception for an error answer (status >= 400): transient (retry with
    backoff) for 429 and 5xx, permanent otherwise, naming the status and the
    server's message."""
    message = f"{what} answered {response.status_code}: {error_detail(response)}"
    return (transient if is_transient(response.status_code) else permanent)(message)


def transport_error(
    exc: httpx.TransportError,
    what: str,
    *,
    transient: type[Exception],
    timeout: float | None = None,
) -> Exception:
    """The exception for a request that got no answer (timed out, unreachable):
    always transient."""
    if isinstance(exc, httpx.TimeoutException):
        after = f" after {timeout:g}s" if timeout is not None else ""
        return transient(f"{what} timed out{after}")
    return transient(f"{what} unreachable: {exc}")
