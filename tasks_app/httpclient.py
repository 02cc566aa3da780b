"""One HTTP client per process for model and embedding servers, shared by threads.

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
