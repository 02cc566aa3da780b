"""report_progress(): the one way a task reports how far it is."""

from __future__ import annotations

import threading
import time

from celery import current_task
from celery.exceptions import Ignore
from django.conf import settings

from tasks_app import services

_last_write: dict[str, float] = {}
_lock = threading.Lock()


class TaskCancelled(Ignore):
    """Raised inside a task whose record was cancelled while it ran."""


def report_progress(current: int, total: int, message: str = "") -> None:
    """Record progress of the running task and stop it if it was cancelled.

    Writes at most once per CLAW_PROGRESS_INTERVAL per task (the final step,
    current >= total, always), so a tight loop cannot write thousands of rows.
    Each write also checks the cancel flag: that is how a task on a pool that
    cannot be terminated (threads) stops within one interval of a cancel.
    """
    request = getattr(current_task, "request", None)
    celery_id = getattr(request, "id", None)
    if not celery_id or getattr(request, "called_directly", True):
        return
    now = time.monotonic()
    with _lock:
        last = _last_write.get(celery_id, 0.0)
        final = 0 < total <= current  # total 0 means unknown: throttled too
        if not final and now - last < settings.CLAW_PROGRESS_INTERVAL:
            return
        _last_write[celery_id] = now
        if len(_last_write) > 10_000:  # ids of finished tasks; forget the oldest half
            for key in sorted(_last_write, key=_last_write.get)[:5_000]:
                del _last_write[key]
    written = services.record_progress(celery_id, current, total, message)
    if not written and services.is_cancel_requested(celery_id):
        services.mark_revoked(celery_id, reason="stopped at a progress check")
        current_task.backend.mark_as_revoked(celery_id, "cancelled", request=request)
        raise TaskCancelled("cancelled")
