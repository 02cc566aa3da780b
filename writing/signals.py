"""Celery signal receivers of writing jobs; each hands off to writing.sections."""

from __future__ import annotations

from celery import signals

from writing import sections


@signals.task_revoked.connect
def on_task_revoked(request, sender=None, **_):
    # A running task terminated by a revoke (prefork) never returns to its body
    # or hooks; this is where its job or section learns that it was cancelled.
    sections.task_revoked(
        getattr(sender, "name", None) or getattr(request, "task", ""),
        list(getattr(request, "args", None) or []),
        dict(getattr(request, "kwargs", None) or {}),
        in_chord=bool(getattr(request, "chord", None)),
    )
