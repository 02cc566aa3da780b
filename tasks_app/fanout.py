"""Fan-out: a task that replaces itself with a chord of members and waits for it
under its own id (knowledge-base updates, document jobs).

    members = [member.si(...).set(headers=target_header(obj)) for ...]
    callback = fanout.chord_callback(finish.s(...), broken_task)
    return fanout.replace_with_chord(self, members, callback)

- The parent's record stays STARTED while the members run; members roll their
  progress up to it (report_parent).
- The callback runs under the parent's id, so the parent ends with the
  callback's outcome (SUCCESS, or FAILURE with what it raised).
- When a member fails outright (killed at its hard time limit, refused), Celery
  breaks the chord without running the callback; the errback (errback_task)
  ends the parent instead of leaving it waiting (end_parent).
- A cancel reaches the members through their records (the domain cancels
  them, or members check the parent's cancel flag); a parent left waiting for
  a chord whose members were cancelled ends REVOKED (cancel_waiting_parents).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from celery import chord, group
from celery.exceptions import ChordError

from claw.celery import app
from tasks_app import services
from tasks_app.models import TaskRecord


def parent_options(*, soft_time_limit: int, time_limit: int) -> dict:
    """Celery options of a task that fans out: its own run is short (plan, then
    Task.replace; a lost database is waited for like in every task, see
    tasks_app.retries), and the chord's callback ends it."""
    return {
        "max_retries": 2,
        "soft_time_limit": soft_time_limit,
        "time_limit": time_limit,
    }


def report_parent(parent_celery_id: str, current: int, total: int, message: str):
    """Roll the members' progress up to the parent's record, which waits STARTED
    for its chord; False if it was cancelled meanwhile."""
    return services.record_progress(parent_celery_id, current, total, message)


def end_parent(parent_celery_id: str, *, error: str | None = None) -> bool:
    """End a parent whose chord's callback will not run (the chord broke, or a
    member run outside it finished the work): SUCCESS, or FAILURE with error."""
    if error is None:
        return services.mark_succeeded(parent_celery_id)
    return services.mark_failed(parent_celery_id, error=error)


def cancel_waiting_parents(records, *, reason: str) -> None:
    """Parents among records that wait STARTED for a chord whose members were
    cancelled: nothing runs them any more, so they end REVOKED now."""
    waiting = records.filter(state=TaskRecord.State.STARTED, children__isnull=False)
    for celery_id in waiting.distinct().values_list("celery_id", flat=True):
        services.mark_revoked(celery_id, reason=reason)


def chord_callback(callback, errback):
    """The chord's callback, with the fan-out's errback linked (errback_task)."""
    callback.link_error(errback.s())
    return callback


def replace_with_chord(task, members: list, callback):
    """Replace the running task by a chord of members whose callback (see
    chord_callback) runs under the task's own id (Task.replace).

    The members' records are written first, in one statement
    (services.record_members), under the chord's group id fixed here.
    """
    header = group(members, app=app).set(task_id=str(uuid.uuid4()))
    services.record_members(header.tasks, parent_id=task.request.id, group_id=header.id)
    fanned = chord(members, callback)
    fanned.tasks = header
    return task.replace(fanned)


def errback_task(name: str, on_broken: Callable[[str, dict, str], Any]):
    """Register the errback of a fan-out under name.

    Celery calls it directly, in the process that found the chord broken, with
    the callback's request (three arguments: such errbacks are not queued); a
    callback that ran and raised is recorded by the worker signals already.
    on_broken(parent celery_id, the callback's kwargs, error) ends the work.
    """

    def broken(request, exc, traceback) -> None:
        if isinstance(exc, ChordError):
            kwargs = dict(getattr(request, "kwargs", None) or {})
            on_broken(request.id, kwargs, str(exc))

    broken.__name__ = broken.__qualname__ = name.rpartition(".")[2]
    return app.task(name=name)(broken)
