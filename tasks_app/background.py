"""Daemon threads a worker process keeps for itself (lease renewal, late starts)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

_started: dict[str, tuple[threading.Thread, int]] = {}  # name -> (thread, pid)
_lock = threading.Lock()


def ensure_thread(name: str, target: Callable[[], object]) -> None:
    """Run target in a daemon thread called name, once per process.

    Threads do not survive a fork: a pool process forked from a parent that had
    started one starts its own (the pid tells them apart).
    """
    with _lock:
        running = _started.get(name)
        if running and running[0].is_alive() and running[1] == os.getpid():
            return
        thread = threading.Thread(target=target, name=name, daemon=True)
        _started[name] = (thread, os.getpid())
        thread.start()
