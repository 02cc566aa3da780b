"""State changes for the task ledger. Admin, API, signal receivers and tasks all go
through here; nothing else writes TaskRecord or TaskEvent.

Every transition is one conditional UPDATE from its allowed source states, so a late
or duplicated signal cannot move a finished record backwards, plus one INSERT of its
timeline event, atomically: one statement on PostgreSQL, one transaction on SQLite
(tasks_app.ledger_writes has the SQL).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, transaction
from django.db.models import F, Model, Q
from django.utils import timezone

from claw.celery import app, broker_priority, platform_priority, registered_tasks
from tasks_app import ledger_writes, lifecycle, publishing, starts
from tasks_app.ledger_writes import Sql
from tasks_app.models import TaskEvent, TaskRecord, TaskState

logger = logging.getLogger(__name__)

State = TaskState
Kind = TaskEvent.Kind

SECRET_KEY_RE = re.compile(
    r"pass(word|wd)?$|secret|token|api[_-]?key|authorization|credential|private[_-]?key",
    re.IGNORECASE,
)
REDACTED = "[redacted]"
TARGET_HEADER = "claw_target"
# Publishing waits this long for a broker that is down before leaving the record to
# the health check, so a request never hangs on a dead Redis.
PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


class InvalidTransition(Exception):
    """The record is not in a state that allows this change (API: 409)."""


class UnknownTask(ValueError):
    """No task of that name is registered."""


class DelayTooLong(ValueError):
    """A countdown or eta further ahead than the broker can keep a message
    (API: 400 naming the field)."""

    def __init__(self, field: str, limit: float):
        self.field = field
        super().__init__(
            f"{field}: at most {limit:g} seconds ahead (CELERY_VISIBILITY_TIMEOUT "
            "less the longest task time limit); a later run would be handed out "
            "again and again by the broker."
        )


def longest_delay() -> float | None:
    """Seconds ahead a submission may be scheduled, None if any.

    Redis hands an unacknowledged message out again after the visibility timeout,
    and a scheduled message waits unacknowledged in a worker until it runs (with
    acks_late, until it ends): celery#2599. The filesystem broker has no such
    timeout.
    """
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout")
    if settings.IS_FILESYSTEM_BROKER or timeout is None:
        return None
    return max(timeout - longest_time_limit(), 0)


def longest_time_limit() -> float:
    """The longest hard time limit of any registered task, in seconds (a task
    without one has CELERY_TASK_TIME_LIMIT): how long a message may stay
    unacknowledged while its task runs."""
    limits = (getattr(t, "time_limit", None) for t in registered_tasks().values())
    return max([settings.CELERY_TASK_TIME_LIMIT, *(lim for lim in limits if lim)])


def check_delay(field: str, seconds_ahead: float | None) -> None:
    """DelayTooLong naming field if a run seconds_ahead from now is further ahead
    than longest_delay()."""
    limit = longest_delay()
    if seconds_ahead is not None and limit is not None and seconds_ahead > limit:
        raise DelayTooLong(field, limit)


# --- helpers ---------------------------------------------------------------


def redact(value: Any) -> Any:
    """Copy of value with every item under a secret-looking key replaced.

    Strings with NUL characters are replaced too, and NULs in keys shown as
    U+FFFD: PostgreSQL's jsonb cannot store U+0000. Like secrets, such values
    travel in the message only, and a retry needs them given again.
    """
    if isinstance(value, dict):
        return {
            _storable_key(key): REDACTED
            if isinstance(key, str) and (SECRET_KEY_RE.search(key) or "\x00" in key)
            else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str) and "\x00" in value:
        return REDACTED
    return value


def _storable_key(key: Any) -> Any:
    return key.replace("\x00", "\ufffd") if isinstance(key, str) else key


def has_redactions(value: Any) -> bool:
    return REDACTED in json.dumps(value)


def route_queue(name: str) -> str:
    """The queue CELERY_TASK_ROUTES gives a task name."""
    route = app.amqp.router.route({}, name, (), {})
    queue = route.get("queue")
    return getattr(queue, "name", queue) or app.conf.task_default_queue


def _worker_max_deliveries(task_name: str) -> int:
    task = registered_tasks().get(task_name)
    retries = getattr(task, "max_retries", None) or 0
    return retries + 1 + settings.CLAW_MAX_REDELIVERIES


# Tests and fixtures add events to records they create themselves.
_add_event = ledger_writes.add_event


def _transition(
    celery_id: str,
    from_states: Iterable[str],
    kind: str,
    *,
    data: dict | None = None,
    extra_filter: dict | None = None,
    also: ledger_writes.Statement | None = None,
    ends: tuple[str, ...] = (),
    context: dict | None = None,
    at: datetime | None = None,
    before: tuple[ledger_writes.Event, ...] = (),
    **updates: Any,
) -> bool:
    """Apply one conditional UPDATE and its event; return whether it applied.

    One statement on PostgreSQL, one transaction elsewhere (ledger_writes). `also`
    commits with it either way. Outside a transaction a lost connection is
    reconnected and the write tried again.

    ends: the final states this transition can reach. Once it applied, the
    domains' lifecycle handlers for them run after commit (tasks_app.lifecycle),
    with context (what the caller knows of the run: its exception, a refusal).
    at: the event's time (now by default); before: events written ahead of it.
    """
    # A run of this attempt here whose STARTED is not written yet: write it first,
    # so every transition but the final SUCCESS (which carries it) sees STARTED.
    starts.flush(celery_id)
    applied = ledger_writes.reconnecting(
        ledger_writes.transition,
        celery_id,
        tuple(from_states),
        extra_filter or {},
        updates,
        kind=kind,
        data=data,
        also=also,
        at=at,
        before=before,
    )
    if applied and ends and lifecycle.wants(ends):
        lifecycle.dispatch(
            celery_id, {**lifecycle.run_context(celery_id), **(context or {})}
        )
    return applied


# --- submitting ------------------------------------------------------------


@dataclass
class Submission:
    """One job to submit: submit()'s arguments, for submit_many."""

    name: str
    args: list | tuple = ()
    kwargs: dict | None = None
    owner: Model | None = None
    queue: str | None = None
    priority: int | None = None
    countdown: float | None = None
    eta: datetime | None = None
    target: Model | None = None
    idempotency_key: str | None = None
    parent: TaskRecord | None = None

    @property
    def payload(self) -> tuple[list, dict]:
        """The real (unredacted) arguments: they travel in the message only."""
        return list(self.args), dict(self.kwargs or {})

    @property
    def replay_key(self) -> tuple[Any, str] | None:
        """(owner id, key) when an earlier record may be returned instead."""
        if self.idempotency_key and self.owner is not None:
            return self.owner.pk, self.idempotency_key
        return None


def submit(
    name: str,
    *,
    args: list | tuple = (),
    kwargs: dict | None = None,
    owner: Model | None = None,
    queue: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    target: Model | None = None,
    idempotency_key: str | None = None,
    parent: TaskRecord | None = None,
) -> TaskRecord:
    """Record a job as PENDING in the caller's transaction and publish it on commit.

    1. An idempotency key already used by the same owner returns that record.
    2. The record and its "queued" event are written now, so a rolled-back request
       never leaves a phantom task.
    3. The message is sent after commit with the record's celery_id as task id; if
       the broker is down the record stays PENDING and check_task_health
       re-publishes it.
    """
    item = Submission(
        name, args, kwargs, owner, queue, priority, countdown, eta, target,
        idempotency_key, parent,
    )  # fmt: skip
    _check(item)
    if item.replay_key:
        existing = TaskRecord.objects.filter(
            owner=owner, idempotency_key=idempotency_key
        ).first()
        if existing:
            return existing
    record = _new_record(item)
    event = {"queue": record.queue}
    if idempotency_key:
        try:
            # A savepoint: a duplicate key must not abort the caller's transaction.
            with transaction.atomic():
                ledger_writes.insert_record(record, Kind.QUEUED, event)
        except IntegrityError:
            # Another request with the same key committed between our check and
            # insert.
            return TaskRecord.objects.get(owner=owner, idempotency_key=idempotency_key)
    else:
        ledger_writes.insert_record(record, Kind.QUEUED, event)
    transaction.on_commit(_PublishOnCommit(record, item.payload))
    return record


class _PublishOnCommit:
    """submit()'s on-commit callback: the submits of one transaction go to the
    broker together, in one publish_many round at the first one's turn, instead
    of one broker round trip each (a request that submits one job is one
    publish, as before).

    Which later submits may go with it: those whose callbacks Django will still
    run. Django drops the callbacks of a rolled-back savepoint from its list,
    and the list holds the only reference to each, so a dropped one is gone from
    the weak registry below by the time the first callback runs. Only callbacks
    registered after this one are taken: in a real commit the earlier ones have
    run already, and in a test whose transaction never commits they never will.
    A callback whose record went out with an earlier batch does nothing.
    """

    __slots__ = ("record", "payload", "sent", "__weakref__")

    def __init__(self, record: TaskRecord, payload: tuple[list, dict]):
        self.record, self.payload, self.sent = record, payload, False
        pending = _pending_publishes()
        n = len(pending)
        if n >= 1024 and not n & (n - 1):
            # Callbacks of rolled-back transactions, at doubling lengths: a
            # connection that never commits a submit keeps a bounded list.
            pending[:] = [ref for ref in pending if ref() is not None]
        pending.append(weakref.ref(self))

    def __call__(self) -> None:
        if self.sent:
            return
        pending = _pending_publishes()
        later = [ref() for ref in pending[_index(pending, self) + 1 :]]
        batch = [self, *(c for c in later if c is not None and not c.sent)]
        pending.clear()
        for callback in batch:
            callback.sent = True
        if len(batch) == 1:
            publish(self.record, payload=self.payload)
        else:
            publish_many([(c.record, c.payload) for c in batch])


def _pending_publishes() -> list[weakref.ref]:
    """The registry of _PublishOnCommit callbacks of this thread's connection."""
    connection = transaction.get_connection()
    try:
        return connection.claw_pending_publishes
    except AttributeError:
        connection.claw_pending_publishes = []
        return connection.claw_pending_publishes


def _index(pending: list[weakref.ref], callback: _PublishOnCommit) -> int:
    for i, ref in enumerate(pending):
        if ref() is callback:
            return i
    return len(pending)  # registry cleared since: nothing after it is known


def submit_many(items: Iterable[Submission]) -> list[TaskRecord]:
    """submit() for many jobs at once: the records, in the order of items.

    The same checks and guarantees as submit, in bulk: every item is checked
    before anything is written (the first bad one raises, with `index` set on the
    exception); the records and their "queued" events are written in the
    caller's transaction by one statement, whatever their number
    (ledger_writes.insert_records); after commit all messages go to the broker in
    one pipelined round (publish_many), and a message that does not get there
    leaves its record PENDING for check_task_health to re-publish, as in submit.
    An item whose idempotency key its owner used already (earlier, or earlier
    in items) gets that record, and nothing new is written or sent for it.
    """
    items = list(items)
    for index, item in enumerate(items):
        try:
            _check(item)
        except (UnknownTask, ValueError) as exc:
            exc.index = index
            raise
    replays = _existing_records(items)
    queues = {
        name: route_queue(name) for name in {i.name for i in items if not i.queue}
    }
    records: list[TaskRecord | None] = []
    new: list[tuple[TaskRecord, Submission]] = []
    firsts: dict[tuple, TaskRecord] = {}
    for index, item in enumerate(items):
        key = item.replay_key
        if key in replays or key in firsts:
            records.append(replays.get(key) or firsts[key])
            continue
        try:
            record = _new_record(item, queues)
        except DelayTooLong as exc:
            exc.index = index
            raise
        records.append(record)
        new.append((record, item))
        if key:
            firsts[key] = record
    written = [record for record, _ in new]
    ledger_writes.insert_records(
        written, Kind.QUEUED, [{"queue": record.queue} for record in written]
    )
    raced = {item.replay_key for record, item in new if record.pk is None}
    if raced:
        # Another request with the same key committed between our check and
        # insert: its record stands for ours.
        replays = _existing_records([i for _, i in new if i.replay_key in raced])
        records = [replays[i.replay_key] if r.pk is None else r
                   for r, i in zip(records, items, strict=True)]  # fmt: skip
    sends = [(record, item.payload) for record, item in new if record.pk is not None]
    if sends:
        transaction.on_commit(lambda: publish_many(sends))
    return records


def record_members(signatures: list, *, parent_id: str, group_id: str) -> None:
    """Write the records of a fan-out's chord members (Celery signatures) before
    Celery publishes the chord, all in one statement (as submit_many), instead
    of one INSERT per message in record_published. Each signature gets its
    record's celery_id as task id and the claw_record header, so
    record_published skips it. A member is never published without its record: the
    records commit first; if the chord is never published (the parent's process
    died), they stay PENDING and check_task_health publishes them.
    """
    parent = TaskRecord.objects.filter(celery_id=parent_id).first()
    targets: dict[str, tuple[int, int] | None] = {}
    records = []
    for sig in signatures:
        options = sig.options
        record = _new_record(
            Submission(
                sig.task,
                args=sig.args,
                kwargs=sig.kwargs,
                queue=options.get("queue"),
                priority=options.get("priority"),
                parent=parent,
            )
        )
        record.group_id = group_id
        header = (options.get("headers") or {}).get(TARGET_HEADER)
        if header is not None:
            if header not in targets:
                targets[header] = _target_from_header(header)
            if targets[header] is not None:
                record.content_type_id, record.object_id = targets[header]
        records.append(record)
    with transaction.atomic():
        ledger_writes.insert_records(
            records, Kind.QUEUED, [{"queue": r.queue} for r in records]
        )
    for sig, record in zip(signatures, records, strict=True):
        headers = {**(sig.options.get("headers") or {}), "claw_record": record.pk}
        sig.set(task_id=record.celery_id, headers=headers)


def _check(item: Submission) -> None:
    """What submit refuses before it reads or writes anything."""
    if item.name not in registered_tasks():
        raise UnknownTask(f"No task named {item.name!r} is registered")
    if item.priority is not None:
        broker_priority(item.priority)  # validates 0-9


def _existing_records(items: list[Submission]) -> dict[tuple, TaskRecord]:
    """Records already holding the items' (owner, idempotency key), in one query."""
    keys: dict[Any, set[str]] = {}
    for item in items:
        if item.replay_key:
            keys.setdefault(item.replay_key[0], set()).add(item.idempotency_key)
    if not keys:
        return {}
    wanted = Q()
    for owner_id, owner_keys in keys.items():
        wanted |= Q(owner_id=owner_id, idempotency_key__in=owner_keys)
    return {
        (r.owner_id, r.idempotency_key): r for r in TaskRecord.objects.filter(wanted)
    }


def _new_record(item: Submission, queues: dict[str, str] | None = None) -> TaskRecord:
    """The unsaved PENDING record of a checked item; DelayTooLong if it is
    scheduled further ahead than the broker keeps a message. queues: the routed
    queue of each task name, when the caller worked them out already."""
    eta = item.eta
    if eta is not None:
        check_delay("eta", (eta - timezone.now()).total_seconds())
    elif item.countdown:
        check_delay("countdown", item.countdown)  # before timedelta can overflow
        eta = timezone.now() + timedelta(seconds=item.countdown)
    owner, parent, target = item.owner, item.parent, item.target
    root = (parent.root or parent) if parent else None
    record = _unsaved_record(
        name=item.name,
        queue=item.queue or (queues or {}).get(item.name) or route_queue(item.name),
        priority=_DEFAULT_PRIORITY if item.priority is None else item.priority,
        args=redact(list(item.args)),
        kwargs=redact(item.kwargs or {}),
        owner_id=owner and owner.pk,
        eta=eta,
        celery_id=str(uuid.uuid4()),
        parent_id=parent and parent.pk,
        root_id=root and root.pk,
        idempotency_key=item.idempotency_key or None,
        content_type_id=target and ContentType.objects.get_for_model(target).pk,
        object_id=target and target.pk,
    )
    # cached, as TaskRecord(owner=..., parent=...) would
    for field, value in (("owner", owner), ("parent", parent), ("root", root)):
        if value is not None:
            setattr(record, field, value)
    return record


# Celery's default priority, the same for every record (app.conf is slow to read).
_DEFAULT_PRIORITY = app.conf.task_default_priority
_RECORD_FIELDS = TaskRecord._meta.concrete_fields
_RECORD_COLUMN = {f.attname: i for i, f in enumerate(_RECORD_FIELDS)}
# Defaults computed per record (a fresh list or dict each); the others are shared.
_FRESH_DEFAULTS = [
    (i, f)
    for i, f in enumerate(_RECORD_FIELDS)
    if f.has_default() and callable(f.default)
]
_DEFAULT_ROW = [f.get_default() for f in _RECORD_FIELDS]


def _unsaved_record(**values) -> TaskRecord:
    """TaskRecord(**values) (attnames only), built from positional values: a
    quarter of the keyword path's cost, which was most of building a bulk
    submission's records."""
    row = _DEFAULT_ROW.copy()
    for i, field in _FRESH_DEFAULTS:
        row[i] = field.get_default()
    for name, value in values.items():
        row[_RECORD_COLUMN[name]] = value
    return TaskRecord(*row)


def publish(record: TaskRecord, *, payload: tuple[list, dict] | None = None) -> bool:
    """Send the record's current attempt to the broker; False if the broker is down.

    The record keeps its state either way: check_task_health re-publishes PENDING
    records whose message never reached the broker.
    """
    message = _message(record, payload)
    if message is None:
        return False
    try:
        app.send_task(
            record.name, **message, retry=True, retry_policy=PUBLISH_RETRY_POLICY
        )
    except Exception as exc:
        logger.warning("Could not publish task record %s: %r", record.pk, exc)
        return False
    return True


# Messages per pipeline round trip in publish_many (kombu's Producer.batch).
PUBLISH_BATCH = 1000


def publish_many(sends: list[tuple[TaskRecord, tuple[list, dict] | None]]) -> bool:
    """publish() for many records through one producer, their messages sent in
    pipelined rounds of PUBLISH_BATCH (kombu's Producer.batch: one Redis round
    trip per round; a broker without batches sends them one by one).

    False if the broker is down: the records not sent stay PENDING, and
    check_task_health re-publishes them, as after a failed publish().
    """
    messages = [(r.name, _message(r, p)) for r, p in sends]
    messages = [(name, m) for name, m in messages if m is not None]
    try:
        with (
            app.producer_or_acquire() as producer,
            producer.batch(max_size=PUBLISH_BATCH),
        ):
            shapes = publishing.Shapes(producer)
            for name, message in messages:
                shapes.send(
                    name, message, retry=True, retry_policy=PUBLISH_RETRY_POLICY
                )
    except Exception as exc:
        logger.warning(
            "Could not publish %d task records (first %s): %r",
            len(messages),
            messages[0][1]["headers"]["claw_record"] if messages else None,
            exc,
        )
        return False
    return len(messages) == len(sends)


def _message(record: TaskRecord, payload: tuple[list, dict] | None) -> dict | None:
    """app.send_task's keyword arguments for the record's current attempt; None if it
    cannot be re-published from its stored arguments."""
    args, kwargs = payload or (record.args, record.kwargs)
    if payload is None and has_redactions([args, kwargs]):
        # Re-publishing from the stored copy would run it with "[redacted]" in
        # place of the secrets; it needs an edited retry instead.
        logger.warning(
            "Not re-publishing task record %s: redacted arguments", record.pk
        )
        return None
    size = len(json.dumps([args, kwargs]))
    return {
        "args": args,
        "kwargs": kwargs,
        "task_id": record.celery_id,
        "queue": record.queue,
        "priority": broker_priority(record.priority),
        "eta": record.eta,
        "headers": {"claw_record": record.pk},
        "compression": "gzip" if size > settings.CLAW_COMPRESS_ABOVE_BYTES else None,
    }


def record_published(
    headers: dict, body: Any, routing_key: str | None, properties: dict
) -> None:
    """Create a record for a message published outside submit().

    Beat, canvas children and callbacks, plain .delay() and send_task all get a
    record here, from the publishing process. Celery's own retries republish with
    the same id and are skipped.
    """
    if headers.get("retries"):
        _record_retry_publish(headers)
        return
    if headers.get("claw_record"):
        return
    celery_id = headers.get("id")
    name = headers.get("task")
    if not celery_id or not name:
        return
    args, kwargs = _body_arguments(body)
    parent_id, root_id = _record_ids_for(
        headers.get("parent_id"), headers.get("root_id")
    )
    options = {}
    if headers.get("periodic_task_name"):
        options["periodic_task_name"] = headers["periodic_task_name"]
    record = TaskRecord(
        name=name,
        queue=routing_key or route_queue(name),
        priority=platform_priority(properties.get("priority")),
        args=redact(args),
        kwargs=redact(kwargs),
        options=options,
        celery_id=celery_id,
        eta=_parse_eta(headers.get("eta")),
        parent_id=parent_id,
        root_id=root_id,
        group_id=headers.get("group") or "",
    )
    target = _target_from_header(headers.get(TARGET_HEADER))
    if target is not None:
        record.content_type_id, record.object_id = target
    try:
        with transaction.atomic():
            ledger_writes.insert_record(record, Kind.QUEUED, {"queue": record.queue})
    except IntegrityError:
        pass  # published twice with one id (a republish); the record exists


def target_header(target: Model) -> dict[str, str]:
    """Message headers that link a canvas-published task's record to target.

    Canvas members (group, chord) are published by Celery, not by submit(), so
    they cannot pass target=; `sig.set(headers=target_header(obj))` does it.
    """
    return {TARGET_HEADER: f"{target._meta.label_lower}:{target.pk}"}


def _target_from_header(value: Any) -> tuple[int, int] | None:
    """(content type id, object id) from "app_label.model:pk", or None."""
    try:
        label, pk = str(value).rsplit(":", 1)
        app_label, model = label.split(".")
        object_id = int(pk)
    except ValueError:
        return None
    # Not the ContentType cache: a stale cached id (content types re-created, as a
    # test flush does) would make the INSERT fail and the record be skipped.
    type_id = (
        ContentType.objects.filter(app_label=app_label, model=model)
        .values_list("id", flat=True)
        .first()
    )
    return None if type_id is None else (type_id, object_id)


def _record_retry_publish(headers: dict) -> None:
    """Celery is republishing an attempt for a retry: mark it RETRY now.

    This runs before the message is sent. Celery's task_retry signal comes only
    after, and with a short backoff another pool process may already have started
    the next run by then, so recording the retry there would be too late. The
    exception being retried is the one being handled right now.
    """
    exc = sys.exc_info()[1]
    mark_retry(
        headers["id"],
        error=repr(exc) if exc else "retry requested",
        eta=_parse_eta(headers.get("eta")),
    )


def _body_arguments(body: Any) -> tuple[list, dict]:
    if isinstance(body, list | tuple) and len(body) >= 2:
        return list(body[0] or []), dict(body[1] or {})
    if isinstance(body, dict):  # task protocol 1
        return list(body.get("args") or []), dict(body.get("kwargs") or {})
    return [], {}


def _record_ids_for(parent: str | None, root: str | None) -> tuple[int | None, ...]:
    """Record ids of a message's parent and root (the root defaults to the
    parent), in one query."""
    wanted = {parent, root} - {None, ""}
    rows = TaskRecord.objects.filter(celery_id__in=wanted).values_list(
        "celery_id", "id"
    )
    found = dict(rows) if wanted else {}
    return found.get(parent), found.get(root) or found.get(parent)


def _parse_eta(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# --- worker-side transitions (called from signal receivers) ----------------


def mark_started(
    celery_id: str,
    *,
    name: str,
    worker: str,
    runner: str = "",
    record_id: Any = None,
) -> str | None:
    """Move the current attempt to STARTED; return why it must not run, or None.

    runner (one per delivery, tasks_app.leases.new_runner) takes the attempt's
    lease, which its process renews while it runs. record_id is the message's
    claw_record header.

    Refusals (the worker then acknowledges the message without running it):
    - "cancelled": the durable cancel flag is set; Celery's in-memory revoke list
      is lost when workers restart, this flag is not.
    - "stale": the message of an earlier attempt of a record that was retried or
      re-queued since (Redis hands it back after the visibility timeout or a
      worker's death); the record's current attempt is another one.
    - "duplicate": a second copy of the attempt that is running now, whose
      runner's lease is live (Redis redelivers a task that outlives the
      visibility timeout). Once the lease lapsed the runner is taken to be dead
      and the redelivery takes the attempt over.
    - "poisoned": the attempt was delivered more often than the task may run; a
      task that kills its worker process would otherwise loop forever, because
      reject_on_worker_lost requeues it with no count.
    - "finished": a redelivery of an attempt that already ended; running it again
      would repeat its effect.
    Stale and duplicate deliveries are shown in the record's timeline as
    "refused" events.
    """
    limit = _worker_max_deliveries(name)
    for _ in range(3):
        now = timezone.now()
        if _transition(
            celery_id,
            TaskRecord.ACTIVE_STATES,
            Kind.STARTED,
            extra_filter={
                "cancel_requested": False,
                "deliveries__lt": limit,
                "lease": Sql(
                    "state <> %s OR lease_until IS NULL OR lease_until < %s",
                    (State.STARTED, ledger_writes.db_value("lease_until", now)),
                ),
            },
            state=State.STARTED,
            started_at=now,
            worker=worker,
            runner=runner,
            lease_until=now + timedelta(seconds=settings.CLAW_LEASE_SECONDS),
            attempts=Sql("attempts + 1"),
            deliveries=Sql("deliveries + 1"),
        ):
            return None
        refusal = _refusal(celery_id, name, worker, runner, record_id, limit, now)
        if refusal != "again":
            return refusal
    # The record kept changing under us (leases released and taken): someone
    # else has it, so this copy must not run beside them.
    return _refuse_duplicate(celery_id, worker, runner="")


def may_start_later(celery_id: str, *, name: str) -> bool:
    """May this delivery run without writing STARTED first (tasks_app.starts)?

    One read, no commit: yes if the record's current attempt is celery_id, it is
    PENDING or RETRY, not cancelled and not past its deliveries. Anything else
    (a refusal, a takeover of a STARTED attempt whose lease lapsed) goes through
    mark_started as before. A cancel flag set after this read is found by the
    final write, as a cancel of a running task would be.
    """
    row = ledger_writes.reconnecting(ledger_writes.start_check, celery_id)
    return (
        row is not None
        and row[0] in (State.PENDING, State.RETRY)
        and not row[1]
        and row[2] < _worker_max_deliveries(name)
    )


def _started_updates(start: starts.Start) -> dict[str, Any]:
    """What mark_started sets, for a start written late (at start.at)."""
    return {
        "started_at": start.at,
        "worker": start.worker,
        "runner": start.runner,
        "attempts": Sql("attempts + 1"),
        "deliveries": Sql("deliveries + 1"),
    }


def mark_started_late(celery_id: str, start: starts.Start) -> bool:
    """PENDING/RETRY -> STARTED for a run that began at start.at and is still
    running (tasks_app.starts), with a fresh lease; False if the record moved
    meanwhile (a cancel: the run's final write then makes it REVOKED)."""
    lease = timezone.now() + timedelta(seconds=settings.CLAW_LEASE_SECONDS)
    return _transition(
        celery_id,
        [State.PENDING, State.RETRY],
        Kind.STARTED,
        at=start.at,
        extra_filter={"cancel_requested": False},
        state=State.STARTED,
        lease_until=lease,
        **_started_updates(start),
    )


def count_lost_run(celery_id: str) -> bool:
    """A pool process died running celery_id before its STARTED was written: count
    the delivery, so a task that kills its process is still stopped after
    _worker_max_deliveries (its next delivery's may_start_later says no)."""
    return bool(
        TaskRecord.objects.filter(
            celery_id=celery_id, state__in=[State.PENDING, State.RETRY]
        ).update(deliveries=F("deliveries") + 1)
    )


def _refusal(
    celery_id: str,
    name: str,
    worker: str,
    runner: str,
    record_id: Any,
    limit: int,
    now: datetime,
) -> str | None:
    """Why mark_started's transition did not apply; "again" if it may now."""
    row = (
        TaskRecord.objects.filter(celery_id=celery_id)
        .values("state", "cancel_requested", "deliveries", "lease_until", "runner")
        .first()
    )
    if row is None:
        return _refuse_stale(celery_id, worker, record_id)
    if row["cancel_requested"]:
        mark_revoked(
            celery_id,
            reason="cancelled before it started",
            context={"refusal": "cancelled", "name": name},
        )
        return "cancelled"
    if row["state"] == State.STARTED and runner and row["runner"] == runner:
        # Our own write, applied although its COMMIT was lost in flight and
        # ledger_writes.reconnecting ran it again: this is the run.
        return None
    if (
        row["state"] == State.STARTED
        and row["lease_until"]
        and (row["lease_until"] >= now)
    ):
        return _refuse_duplicate(celery_id, worker, runner=row["runner"])
    if row["state"] in TaskRecord.ACTIVE_STATES and row["deliveries"] >= limit:
        mark_failed(
            celery_id,
            error=f"Stopped after {row['deliveries']} deliveries: the task's worker "
            "process died every time it ran it.",
            from_states=TaskRecord.ACTIVE_STATES,
            context={"refusal": "poisoned", "name": name},
        )
        return "poisoned"
    if row["state"] in TaskRecord.ACTIVE_STATES:
        return "again"  # its lease was released or lapsed since our UPDATE
    return "finished"


def _refuse_stale(celery_id: str, worker: str, record_id: Any) -> str | None:
    """Refuse a delivery of an earlier attempt of a record; None if no record
    ever had celery_id (published before the ledger knew it: it runs untracked).

    Every attempt's "queued" event carries its Celery id, so the record is found
    for messages without the claw_record header too (beat, .delay()).
    """
    earlier = TaskEvent.objects.filter(kind=Kind.QUEUED, celery_id=celery_id)
    if str(record_id or "").isdigit():
        earlier = earlier.filter(record_id=int(record_id))
    found = earlier.values_list("record_id", flat=True).first()
    if found is None:
        return None
    current = TaskRecord.objects.filter(pk=found).values_list("celery_id", flat=True)
    data = {"reason": "stale", "current": current.first()}
    ledger_writes.add_delivery_event(found, celery_id, worker, Kind.REFUSED, data)
    return "stale"


def _refuse_duplicate(celery_id: str, worker: str, *, runner: str) -> str:
    record_id = (
        TaskRecord.objects.filter(celery_id=celery_id)
        .values_list("pk", flat=True)
        .first()
    )
    if record_id is not None:
        data = {"reason": "duplicate", "running_on": runner}
        ledger_writes.add_delivery_event(
            record_id, celery_id, worker, Kind.REFUSED, data
        )
    return "duplicate"


def renew_leases(celery_ids: list[str], *, runner: str) -> int:
    """Extend the leases runner holds on these running attempts; rows renewed.

    Not a transition and no event (a long task would fill its timeline with
    them): only a lease this runner still holds moves, so a runner that lost
    its lease to a takeover cannot extend its successor's.
    """
    until = timezone.now() + timedelta(seconds=settings.CLAW_LEASE_SECONDS)
    return TaskRecord.objects.filter(
        celery_id__in=celery_ids, state=State.STARTED, runner=runner
    ).update(lease_until=until)


def release_lease(celery_id: str, *, holder: str) -> bool:
    """The run holding the attempt's lease is over while the record stays
    STARTED: its process died (the worker saw the pool process go), or it handed
    the attempt on (Task.replace, a requeueing Reject). The next delivery may
    then take the attempt over at once instead of waiting for the lease to lapse.

    holder is the run's runner, or leases.process_name of a dead process (every
    runner of that process).
    """
    return bool(
        TaskRecord.objects.filter(
            celery_id=celery_id, state=State.STARTED, runner__startswith=holder
        ).update(lease_until=None)
    )


def mark_retry(celery_id: str, *, error: str, eta: datetime | None = None) -> bool:
    """STARTED -> RETRY, or REVOKED if a cancel arrived while it ran."""
    if _transition(
        celery_id,
        [State.STARTED],
        Kind.RETRY,
        data={"error": error[:2000], "eta": eta.isoformat() if eta else None},
        extra_filter={"cancel_requested": False},
        state=State.RETRY,
        error=error,
        eta=eta,
    ):
        return True
    # The retry message is on its way, but the next run will be refused; the
    # record must not wait in STARTED for it.
    return _revoke_if_cancelled(celery_id, reason="retried after cancel was requested")


def mark_succeeded(
    celery_id: str, *, also: ledger_writes.Statement | None = None
) -> bool:
    """STARTED -> SUCCESS, or REVOKED if a cancel arrived while it ran.

    `also` is the result backend's TaskResult upsert (LedgerBackend): the result
    and the SUCCESS commit together, in one statement on PostgreSQL, and the
    result is stored even when the transition does not apply.

    A run whose STARTED was not written (tasks_app.starts) moves from PENDING or
    RETRY instead, and this statement writes what STARTED would have (started_at,
    worker, attempts, deliveries, the "started" event at the run's start).
    """
    now = timezone.now()
    start = starts.take(celery_id)
    late: dict[str, Any] = {}
    if start is not None:
        late = {
            "before": ((Kind.STARTED, None, start.at),),
            "lease_until": None,
            **_started_updates(start),
        }
    try:
        succeeded = _transition(
            celery_id,
            [State.PENDING, State.RETRY] if start else [State.STARTED],
            Kind.SUCCEEDED,
            extra_filter={"cancel_requested": False},
            also=also,
            ends=(State.SUCCESS,),
            state=State.SUCCESS,
            finished_at=now,
            progress_current=Sql("progress_total"),
            **late,
        )
    except Exception:
        if start is not None:  # the backend stores again (a lost database)
            starts.restore(celery_id, start)
        raise
    if succeeded:
        return True
    # A late success must not overwrite a cancel: the caller was told it stopped.
    return _revoke_if_cancelled(celery_id, reason="finished after cancel was requested")


def _revoke_if_cancelled(celery_id: str, *, reason: str) -> bool:
    """An active record whose cancel flag is set becomes REVOKED.

    Only with the flag: a success or retry signal for a record whose STARTED write
    was lost must not make it look cancelled.
    """
    return _transition(
        celery_id,
        TaskRecord.ACTIVE_STATES,
        Kind.CANCELLED,
        data={"reason": reason},
        extra_filter={"cancel_requested": True},
        ends=(State.REVOKED,),
        context={"reason": reason},
        state=State.REVOKED,
        finished_at=timezone.now(),
    )


def mark_failed(
    celery_id: str,
    *,
    error: str,
    traceback: str = "",
    from_states: Iterable[str] = (State.PENDING, State.STARTED, State.RETRY),
    exc: BaseException | None = None,
    context: dict | None = None,
) -> bool:
    """Record a final failure; a cancelled record ends REVOKED instead. exc (the
    run's exception, in its worker) goes to the lifecycle handlers."""
    final_state = Sql(
        "CASE WHEN cancel_requested THEN %s ELSE %s END",
        (State.REVOKED, State.FAILURE),
    )
    return _transition(
        celery_id,
        from_states,
        Kind.FAILED,
        data={"error": error[:2000]},
        ends=(State.FAILURE, State.REVOKED),
        context={"exc": exc, **(context or {})},
        state=final_state,
        error=error,
        traceback=traceback,
        finished_at=timezone.now(),
    )


def mark_revoked(
    celery_id: str, *, reason: str = "", context: dict | None = None
) -> bool:
    """Any revoke (ours or `celery control revoke`) is final and sets the durable flag."""
    return _transition(
        celery_id,
        TaskRecord.ACTIVE_STATES,
        Kind.CANCELLED,
        data={"reason": reason},
        ends=(State.REVOKED,),
        context={"reason": reason, **(context or {})},
        state=State.REVOKED,
        cancel_requested=True,
        finished_at=timezone.now(),
    )


def record_progress(
    celery_id: str, current: int, total: int, message: str = ""
) -> bool:
    """Store progress of a running attempt; False if it was cancelled meanwhile."""
    return _transition(
        celery_id,
        [State.STARTED],
        Kind.PROGRESS,
        data={"current": current, "total": total, "message": message[:500]},
        extra_filter={"cancel_requested": False},
        progress_current=max(0, int(current)),
        progress_total=max(0, int(total)),
        progress_message=message[:500],
        # No lease renewal here: a fan-out parent's progress is written by its
        # members (tasks_app.fanout), not by a run of the parent.
    )


def mark_lost(record: TaskRecord, *, reason: str) -> bool:
    """A STARTED record whose worker is gone (health check)."""
    return _transition(
        record.celery_id,
        [State.STARTED],
        Kind.LOST,
        data={"reason": reason},
        ends=(State.LOST,),
        context={"reason": reason, "name": record.name},
        state=State.LOST,
        error=reason,
        finished_at=timezone.now(),
    )


# --- operator actions ------------------------------------------------------


def cancel(record: TaskRecord) -> TaskRecord:
    """Cancel a pending, retrying or running record.

    1. Set the durable flag first: from then on no worker will start it, even one
       that missed the revoke broadcast or restarted.
    2. A record nobody runs (PENDING, RETRY) becomes REVOKED at once.
    3. After commit, broadcast a revoke; a running attempt is terminated (prefork)
       or stops at its next progress report. The worker's task_revoked signal (or
       the late success, see mark_succeeded) makes it REVOKED.
    """
    with transaction.atomic():
        flagged = TaskRecord.objects.filter(
            pk=record.pk, state__in=TaskRecord.ACTIVE_STATES
        ).update(cancel_requested=True)
        if not flagged:
            record.refresh_from_db()
            raise InvalidTransition(f"Task #{record.pk} is already {record.state}")
        record.refresh_from_db()
        queued = _transition(
            record.celery_id,
            [State.PENDING, State.RETRY],
            Kind.CANCELLED,
            data={"reason": "cancelled while queued"},
            ends=(State.REVOKED,),
            context={"reason": "cancelled while queued", "name": record.name},
            state=State.REVOKED,
            finished_at=timezone.now(),
        )
    celery_id = record.celery_id
    transaction.on_commit(lambda: _broadcast_revoke(celery_id, terminate=not queued))
    record.refresh_from_db()
    return record


def _broadcast_revoke(celery_id: str, *, terminate: bool) -> None:
    from tasks_app import workers

    try:
        workers.revoke(celery_id, terminate=terminate)
    except Exception as exc:
        logger.warning("Revoke broadcast for %s failed: %r", celery_id, exc)


def retry(
    record: TaskRecord, *, args: list | None = None, kwargs: dict | None = None
) -> TaskRecord:
    """Start a new attempt of a failed, cancelled or lost record.

    The new attempt gets a new celery_id; events and results of earlier attempts
    stay. Edited arguments replace the stored ones (secret-looking keys redacted,
    as in submit).

    A domain whose rows must be reopened first (a failed writing job) registers a
    handler with lifecycle.on_retry, called in the same transaction: it reopens
    what the new attempt reruns, or raises InvalidTransition with the reason the
    record cannot be retried.
    """
    payload = _reopen(record, args, kwargs)
    attempt = record.celery_id

    def publish_unless_superseded():
        # A later retry of this record in the same transaction made a newer
        # attempt (and published it): this one's message would carry that id too.
        if record.celery_id == attempt:
            publish(record, payload=payload)

    transaction.on_commit(publish_unless_superseded)
    return record


def retry_many(
    records: Iterable[TaskRecord],
) -> tuple[list[TaskRecord], list[tuple[TaskRecord, InvalidTransition]]]:
    """retry() for many records (an admin selection, a failure group,
    retry_failed): (the records retried, the refused ones with why).

    Each record is reopened in a savepoint of its own (its domain's
    lifecycle.before_retry may refuse it alone), and after commit every new
    attempt goes to the broker in one pipelined round (publish_many).
    """
    retried, refused, sends = [], [], []
    with transaction.atomic():
        for record in records:
            try:
                with transaction.atomic():
                    payload = _reopen(record, None, None)
            except InvalidTransition as exc:
                refused.append((record, exc))
                continue
            retried.append(record)
            sends.append((record, payload))
        if sends:
            transaction.on_commit(lambda: publish_many(sends))
    return retried, refused


def _reopen(record: TaskRecord, args: list | None, kwargs: dict | None):
    """retry's writes: the record PENDING under a new celery_id, its "queued"
    event; the message's (args, kwargs)."""
    new_args = record.args if args is None else list(args)
    new_kwargs = record.kwargs if kwargs is None else dict(kwargs)
    if has_redactions([new_args, new_kwargs]):
        raise InvalidTransition(
            f"Task #{record.pk} has redacted secret arguments; edit and retry with "
            "the real values"
        )
    previous = record.celery_id
    new_id = str(uuid.uuid4())
    with transaction.atomic():
        updated = TaskRecord.objects.filter(
            pk=record.pk, state__in=TaskRecord.RETRYABLE_STATES
        ).update(
            state=State.PENDING,
            celery_id=new_id,
            args=redact(new_args),
            kwargs=redact(new_kwargs),
            error="",
            traceback="",
            started_at=None,
            finished_at=None,
            eta=None,
            cancel_requested=False,
            deliveries=0,
            runner="",
            lease_until=None,
            progress_current=0,
            progress_total=0,
            progress_message="",
        )
        if updated != 1:
            # Another admin or API call retried it first, or it has not finished.
            record.refresh_from_db()
            raise InvalidTransition(
                f"Task #{record.pk} is {record.state}, not retryable"
            )
        lifecycle.before_retry(record)  # may refuse: the UPDATE above rolls back
        ledger_writes.add_event(new_id, Kind.QUEUED, {"retry_of": previous})
    record.refresh_from_db()
    # As in submit(): edited secrets are stored redacted and travel in the message.
    return list(new_args), dict(new_kwargs)


def is_cancel_requested(celery_id: str) -> bool:
    return TaskRecord.objects.filter(
        celery_id=celery_id, cancel_requested=True
    ).exists()
