"""The one lifecycle hook: how a domain keeps its own rows in step with its tasks.

A domain registers, for its tasks (by registered name) or for the model its
records target, what happens when a record ends (SUCCESS, FAILURE, REVOKED,
LOST):

    lifecycle.on_end("claw.generate_ai_response", reply_ended,
                     states=(FAILURE, REVOKED))

tasks_app.services calls dispatch() from the one place a record's state changes
(services._transition), after the transition commits: at once for a worker's
autocommitted write, on commit inside a transaction (a cancel from the API).
A handler gets an Ended: the record as it is after the transition, and what the
process that ended it knew (the exception of a failed run, the ledger's refusal,
whether the run was a chord member). Handlers are idempotent (conditional
UPDATEs of their rows), because a record can be reported more than once (a
refused redelivery, a late signal) and a domain's own code may have ended the
row already. A failing handler is logged: it must not break a worker or a
request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import current_task
from django.db import transaction
from django.db.models import Model

from tasks_app.models import TaskRecord, TaskState
from tasks_app.ownership import NotOwned

logger = logging.getLogger(__name__)

ENDS = (TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED, TaskState.LOST)


@dataclass(frozen=True)
class Ended:
    """A record that reached a final state (or LOST), and how it got there."""

    record: TaskRecord
    exc: BaseException | None = None  # the failed run's exception, in its worker
    refusal: str = ""  # "cancelled" or "poisoned": the ledger refused a delivery
    reason: str = ""  # of a revoke: "terminated", "cancelled while queued", ...
    in_chord: bool | None = None  # the run was a chord member; None: not known

    @property
    def state(self) -> str:
        return self.record.state

    @property
    def started(self) -> bool:
        """The attempt that ended had started running (not refused or queued)."""
        return self.record.started_at is not None

    @property
    def error(self) -> str:
        """What went wrong, as a domain row shows it: "Type: message"."""
        if self.exc is not None:
            return f"{type(self.exc).__name__}: {self.exc}"
        return self.record.error


Handler = Callable[[Ended], Any]


@dataclass
class _Registry:
    ends: dict[Any, list[tuple[Handler, frozenset]]] = field(default_factory=dict)
    models: set[str] = field(default_factory=set)  # keys that are model labels
    states: set[str] = field(default_factory=set)


_registry = _Registry()


def on_end(
    *keys: str | type[Model], handler: Handler, states: Iterable[str] = ENDS
) -> None:
    """Call handler(Ended) when a record of these tasks (registered names), or
    targeting these models, reaches one of states."""
    wanted = frozenset(states)
    for key in keys:
        if not isinstance(key, str):
            _registry.models.add(_key(key))
        entries = _registry.ends.setdefault(_key(key), [])
        if not any(h == handler for h, _ in entries):
            entries.append((handler, wanted))
    _registry.states.update(wanted)


def _key(key: str | type[Model]) -> Any:
    return key if isinstance(key, str) else key._meta.label_lower


def wants(states: Iterable[str]) -> bool:
    """Whether any handler waits for one of states (the hot path of a tiny
    task's SUCCESS reads nothing more when none does)."""
    return not _registry.states.isdisjoint(states)


def run_context(celery_id: str) -> dict:
    """What the running task knows of itself, when celery_id is the task running
    in this process (a worker's signal receivers): whether it is a chord member."""
    request = getattr(current_task, "request", None)
    if request is None or getattr(request, "id", None) != celery_id:
        return {}
    return {"in_chord": bool(getattr(request, "chord", None))}


def dispatch(celery_id: str, context: dict) -> None:
    """Call the handlers of the record whose attempt celery_id just ended, after
    the transition commits. context["name"], where the caller knows the task's
    name, spares the read of a record nobody handles."""
    name = context.pop("name", None)
    if isinstance(context.get("exc"), NotOwned):
        # The record's arguments name another user's objects: its handlers,
        # which act on what the arguments name, must not touch them either.
        return
    if isinstance(name, str) and name not in _registry.ends and not _registry.models:
        return
    transaction.on_commit(lambda: _dispatch(celery_id, context))


def _dispatch(celery_id: str, context: dict) -> None:
    record = (
        TaskRecord.objects.select_related("content_type")
        .filter(celery_id=celery_id)
        .first()
    )
    if record is None or record.state not in ENDS:
        return
    keys = [record.name]
    if record.content_type is not None:
        ct = record.content_type
        keys.append(f"{ct.app_label}.{ct.model}")
    ended = Ended(record, **context)
    for key in keys:
        for handler, states in list(_registry.ends.get(key, ())):
            if record.state in states:
                _call(handler, ended, record)


def _call(handler: Handler, ended: Ended, record: TaskRecord) -> None:
    try:
        handler(ended)
    except Exception:
        logger.exception(
            "Lifecycle handler %s failed for task record %s (%s)",
            getattr(handler, "__qualname__", handler),
            record.pk,
            record.state,
        )


# --- before a retry ----------------------------------------------------------------

RetryHandler = Callable[[TaskRecord], Any]
_retry_handlers: dict[str, RetryHandler] = {}


def on_retry(*names: str, handler: RetryHandler) -> None:
    """Call handler(record) before a new attempt of a record of these tasks
    (services.retry, in its transaction): it reopens what the attempt reruns
    (a failed writing job), or raises services.InvalidTransition saying why the
    record cannot be retried."""
    for name in names:
        _retry_handlers[name] = handler


def before_retry(record: TaskRecord) -> None:
    handler = _retry_handlers.get(record.name)
    if handler is not None:
        handler(record)
