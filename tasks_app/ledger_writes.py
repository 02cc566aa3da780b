"""The SQL under tasks_app.services' transitions. Only services calls these.

Per tiny task the ledger writes a record, a transition to STARTED and one to
SUCCESS, each with its event; on PostgreSQL each of those is one statement (a
data-modifying CTE: the UPDATE's or INSERT's RETURNING feeds the event INSERT), so
outside a transaction it is one round trip and one commit. SQLite cannot put an
UPDATE in a WITH clause, so there the two statements share a transaction.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from typing import Any

from django.db import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.db.models import JSONField
from django.utils import timezone

from tasks_app import live
from tasks_app.models import TaskEvent, TaskRecord

# Seconds to wait before each new try of a write whose connection was lost (a
# restarted PostgreSQL, a dropped idle connection): about 15 s in all.
RECONNECT_DELAYS = (0.05, 0.2, 0.5, 1, 2, 4, 8)
Statement = tuple[str, list]


def _cursor():
    """connection.cursor(), binding parameters on the server on PostgreSQL.

    Django's psycopg cursors merge the parameters into the text (client-side
    binding), so every call is a new query to parse, analyse and plan: measured
    under a busy worker, that was about 40 % of PostgreSQL's CPU for a tiny
    task's ledger writes, more than running them (bench/NOTES.md, issue 21).
    With the parameters sent apart, psycopg prepares each of the few texts
    built here once per connection, after prepare_threshold runs of it (5; the
    database option prepare_threshold, None for a pooler that cannot keep
    prepared statements). Still Django's cursor wrapper: its error translation
    (ledger writes reconnect on its OperationalError), wrappers and query log.
    """
    if connection.vendor != "postgresql":
        return connection.cursor()
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        # what connection.cursor() does, with the other psycopg cursor class
        return connection._prepare_cursor(ServerBindingCursor(connection.connection))


def _event_insert(source: str, events: int = 1) -> str:
    """INSERT of events (kind, at, data) per row of source (id, attempts,
    celery_id, worker), in their order."""
    qn = connection.ops.quote_name
    head = (
        f"INSERT INTO {qn(TaskEvent._meta.db_table)} (record_id, kind, at, attempt,"
        " celery_id, worker, data)"
    )
    if events == 1:
        return (
            f"{head} SELECT id, %s, %s, attempts, celery_id, worker, %s FROM {source}"
        )
    rows = ", ".join(["(%s, %s::timestamptz, %s::jsonb)"] * events)
    return (
        f"{head} SELECT id, e.kind, e.at, attempts, celery_id, worker, e.data"
        f" FROM {source} CROSS JOIN (VALUES {rows}) AS e(kind, at, data)"
    )


def _event_params(kind: str, data: dict | None, at=None) -> list:
    return [kind, at or timezone.now(), json.dumps(data or {})]


# An event written before a transition's own (the "started" of a start written
# late, services.mark_succeeded): kind, data, at.
Event = tuple[str, dict | None, Any]


def add_event(celery_id: str, kind: str, data: dict | None = None, at=None) -> None:
    """Append an event to the record whose current attempt is celery_id.

    One INSERT ... SELECT, so the hot path never reads the record into Python.
    """
    record_table = connection.ops.quote_name(TaskRecord._meta.db_table)
    sql = _event_insert(record_table) + " WHERE celery_id = %s"
    with connection.cursor() as cursor:
        cursor.execute(sql, [*_event_params(kind, data, at), celery_id])
    _announce(celery_id)


def _announce(celery_id: str, row: tuple | None = None) -> None:
    """Ring the live doorbell of an event just written, once it commits: row is
    (record id, owner id, root id, parent id) when the write returned it; otherwise, and
    only when something listens (the services stack), it is read."""
    if not live.enabled() or not live.listening():
        return
    if row is None:
        row = (
            TaskRecord.objects.filter(celery_id=celery_id)
            .values_list("pk", "owner_id", "root_id", "parent_id")
            .first()
        )
    if row is not None:
        live.task_event_written(*row)


def add_delivery_event(
    record_id: int, celery_id: str, worker: str, kind: str, data: dict
) -> None:
    """Append an event about one delivery (celery_id, taken by worker) to a record.

    Unlike add_event, for any attempt of the record, not only its current one: a
    refused delivery of an earlier attempt belongs in the record's timeline under
    that attempt's id.
    """
    record_table = connection.ops.quote_name(TaskRecord._meta.db_table)
    event_table = connection.ops.quote_name(TaskEvent._meta.db_table)
    sql = (
        f"INSERT INTO {event_table} (record_id, kind, at, attempt, celery_id, worker,"
        f" data) SELECT id, %s, %s, attempts, %s, %s, %s FROM {record_table}"
        " WHERE id = %s"
    )
    kind, at, payload = _event_params(kind, data)
    with connection.cursor() as cursor:
        cursor.execute(sql, [kind, at, celery_id, worker, payload, record_id])


def start_check(celery_id: str) -> tuple | None:
    """(state, cancel_requested, deliveries) of the record whose current attempt
    is celery_id, or None: the one read before a run (services.may_start_later),
    without building a query (see _update)."""
    qn = connection.ops.quote_name
    with _cursor() as cursor:
        cursor.execute(
            f"SELECT state, cancel_requested, deliveries FROM"
            f" {qn(TaskRecord._meta.db_table)} WHERE celery_id = %s",
            [celery_id],
        )
        return cursor.fetchone()


def db_value(field: str, value: Any) -> Any:
    """value as the database stores TaskRecord.<field>, for a Sql parameter."""
    return TaskRecord._meta.get_field(field).get_db_prep_value(value, connection)


@dataclass(frozen=True)
class Sql:
    """A value of SET that is SQL rather than a parameter, e.g. Sql("attempts + 1")."""

    text: str
    params: tuple = ()


OPERATORS = {"": "=", "lt": "<"}
_update_texts: dict[tuple, str] = {}


def _update(
    celery_id: str,
    from_states: tuple[str, ...],
    conditions: dict[str, Any],
    updates: dict[str, Any],
) -> Statement:
    """UPDATE of the record whose current attempt is celery_id, if its state is
    one of from_states and it meets conditions ({"deliveries__lt": 4}; a Sql
    value is a condition of its own, its key only a name).

    Written here rather than by QuerySet.update(): building and compiling the
    query took more CPU than the database spent running it (about 0.5 ms of a
    tiny task's 2 ms in a pool process). The text depends only on the shape of
    the call, so it is built once; the values are prepared by their model fields
    as the ORM would.
    """
    key = (
        connection.vendor,
        len(from_states),
        tuple(
            (k, v.text if isinstance(v, Sql) else None) for k, v in conditions.items()
        ),
        tuple((k, v.text if isinstance(v, Sql) else None) for k, v in updates.items()),
    )
    text = _update_texts.get(key)
    if text is None:
        text = _update_texts[key] = _update_text(len(from_states), conditions, updates)
    get_field = TaskRecord._meta.get_field
    params = []
    for name, value in updates.items():
        if isinstance(value, Sql):
            params.extend(value.params)
        else:
            params.append(get_field(name).get_db_prep_save(value, connection))
    params += [celery_id, *from_states]
    for lookup, value in conditions.items():
        if isinstance(value, Sql):
            params.extend(value.params)
            continue
        field = get_field(lookup.partition("__")[0])
        params.append(field.get_db_prep_value(value, connection))
    return text, params


def _update_text(states: int, conditions: dict[str, Any], updates: dict) -> str:
    qn = connection.ops.quote_name
    get_field = TaskRecord._meta.get_field
    sets = ", ".join(
        f"{qn(get_field(name).column)} = "
        + (value.text if isinstance(value, Sql) else "%s")
        for name, value in updates.items()
    )
    where = [f"celery_id = %s AND state IN ({', '.join(['%s'] * states)})"]
    for lookup, value in conditions.items():
        if isinstance(value, Sql):
            where.append(f"({value.text})")
            continue
        name, _, operator = lookup.partition("__")
        where.append(f"{qn(get_field(name).column)} {OPERATORS[operator]} %s")
    table = qn(TaskRecord._meta.db_table)
    return f"UPDATE {table} SET {sets} WHERE {' AND '.join(where)}"


def transition(
    celery_id: str,
    from_states: tuple[str, ...],
    conditions: dict[str, Any],
    updates: dict[str, Any],
    *,
    kind: str,
    data: dict | None,
    also: Statement | None = None,
    at=None,
    before: tuple[Event, ...] = (),
) -> bool:
    """The conditional UPDATE (at most one row: celery_id is unique) and its event.

    `also` is one more statement that commits with the transition whether or not
    the transition applies (the result backend's TaskResult upsert). at is the
    event's time (default now); before are events written ahead of it.
    """
    update, params = _update(celery_id, from_states, conditions, updates)
    events = [*before, (kind, data, at)]
    event_params = [p for k, d, a in events for p in _event_params(k, d, a)]
    with _cursor() as cursor:
        if connection.vendor == "postgresql":
            sql = (
                f"WITH moved AS ({update} RETURNING id, attempts, celery_id, worker,"
                " owner_id, root_id, parent_id)"
            )
            if also:
                sql += f", also AS ({also[0]})"
                params += also[1]
            # The event INSERT runs as a CTE whether or not the SELECT reads it;
            # the SELECT returns what the live doorbell needs.
            cursor.execute(
                f"{sql}, event AS ({_event_insert('moved', len(events))})"
                " SELECT id, owner_id, root_id, parent_id FROM moved",
                params + event_params,
            )
            row = cursor.fetchone()
            if row is not None:
                _announce(celery_id, row)
            return row is not None
        with transaction.atomic():
            cursor.execute(update, params)
            applied = cursor.rowcount == 1
            if applied:
                for event_kind, event_data, event_at in events:
                    add_event(celery_id, event_kind, event_data, event_at)
            if also:
                cursor.execute(*also)
    return applied


def insert_record(record: TaskRecord, kind: str, data: dict | None) -> None:
    """INSERT a new record and its first event; sets record.pk."""
    if connection.vendor != "postgresql":
        with transaction.atomic():
            record.save(force_insert=True)
            add_event(record.celery_id, kind, data)
        return
    meta = TaskRecord._meta
    qn = connection.ops.quote_name
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    values = [
        f.get_db_prep_save(f.pre_save(record, add=True), connection) for f in fields
    ]
    sql = (
        f"WITH added AS (INSERT INTO {qn(meta.db_table)}"
        f" ({', '.join(qn(f.column) for f in fields)})"
        f" VALUES ({', '.join(['%s'] * len(fields))})"
        f" RETURNING id, attempts, celery_id, worker) "
        + _event_insert("added")
        + " RETURNING record_id"
    )
    with _cursor() as cursor:
        cursor.execute(sql, values + _event_params(kind, data))
        record.pk = cursor.fetchone()[0]
    _announce(
        record.celery_id,
        (record.pk, record.owner_id, record.root_id, record.parent_id),
    )
    record._state.adding = False
    record._state.db = connection.alias


def insert_records(records: list[TaskRecord], kind: str, data: list[dict]) -> None:
    """INSERT new records and their first events (data[i] is records[i]'s), in the
    caller's transaction; sets pk on each record written.

    On PostgreSQL one statement writes them all (_insert_many_text), so the
    statement's text stays short whatever the number of records, and a record
    whose (owner, idempotency key) is taken already is skipped (ON CONFLICT DO
    NOTHING) and keeps pk None, for the caller to look the existing one up.
    Elsewhere each record is insert_record in a savepoint, skipped the same way.
    """
    if not records:
        return
    if connection.vendor != "postgresql":
        for record, event in zip(records, data, strict=True):
            try:
                with transaction.atomic():
                    insert_record(record, kind, event)
            except IntegrityError:
                record.pk = None
        return
    now = timezone.now()
    columns = [_column(f, records, now) for f in _record_fields()]
    shared = tuple(once for once, _ in columns)
    data = [json.dumps(d) for d in data]
    data_shared = _same(data)
    params = [
        *(value for once, value in columns if once),
        *(values for once, values in columns if not once),
        *([] if data_shared else [[r.celery_id for r in records], data]),
        kind,
        timezone.now(),
        *([data[0]] if data_shared else []),
    ]
    with connection.cursor() as cursor:
        cursor.execute(_insert_many_text(shared, data_shared), params)
        written = {row[1]: row for row in cursor.fetchall()}
    for record in records:
        found = written.get(record.celery_id)
        if found is None:
            continue
        record.pk = found[0]
        record._state.adding = False
        record._state.db = connection.alias
        _announce(record.celery_id, (found[0], *found[2:]))


def _column(field, records: list[TaskRecord], now) -> tuple[bool, Any]:
    """One column of insert_records: (True, the value) when every record has the
    same one, else (False, the values); as psycopg adapts them, i.e. what
    get_db_prep_save(pre_save()) would give, computed once per column rather
    than once per value (that took a third of a bulk submission's CPU).
    celery_id always varies: its array gives the rows."""
    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        for record in records:
            setattr(record, field.attname, now)
        return True, now
    values = [getattr(record, field.attname) for record in records]
    if isinstance(field, JSONField):
        if _all_empty(values):  # no kwargs, no options...: one dump, not 10,000
            first = values[0]
            return True, None if first is None else json.dumps(first)
        # compared as JSON text: 1 == True and 1 == 1.0 in Python, not in JSON
        values = [None if v is None else json.dumps(v, cls=field.encoder)
                  for v in values]  # fmt: skip
    once = field.name != "celery_id" and _same(values)
    return once, values[0] if once else values


def _all_empty(values: list) -> bool:
    """Every value None, or every one an empty list, or every one an empty dict."""
    kind = type(values[0])
    return kind in (type(None), list, dict) and all(
        type(v) is kind and not v for v in values
    )


def _record_fields() -> list:
    return [f for f in TaskRecord._meta.concrete_fields if not f.primary_key]


def _same(values: list) -> bool:
    first = values[0]
    return all(v == first for v in values)


@functools.cache
def _insert_many_text(shared: tuple[bool, ...], data_shared: bool) -> str:
    """The records' INSERT feeds the events' INSERT. A column whose value every
    record shares (shared[i]: in a bulk submission most are: state, attempts,
    timestamps, queue...) is one parameter; each other column is one array, the
    arrays unnested side by side into rows, so the client adapts a few arrays
    instead of thirty. The events' data is one parameter too when every event's
    is the same (data_shared), or an array joined to the records by celery_id."""
    qn = connection.ops.quote_name
    fields = _record_fields()
    names = [f"c{i}" for i in range(len(fields))]
    row = [
        f"%s::{f.db_type(connection)}" if once else f"v.{name}"
        for f, name, once in zip(fields, names, shared, strict=True)
    ]
    varying = [(f, name) for f, name, once in zip(fields, names, shared, strict=True)
               if not once]  # fmt: skip
    arrays = ", ".join(f"%s::{f.db_type(connection)}[]" for f, _ in varying)
    if data_shared:
        data, event_data, join = "", "%s::jsonb", ""
    else:
        data = (
            " data AS (SELECT * FROM unnest(%s::text[], %s::jsonb[]) AS d"
            " (celery_id, data)),"
        )
        event_data, join = "data.data", " JOIN data ON data.celery_id = added.celery_id"
    return (
        f"WITH added AS (INSERT INTO {qn(TaskRecord._meta.db_table)}"
        f" ({', '.join(qn(f.column) for f in fields)})"
        f" SELECT {', '.join(row)} FROM unnest({arrays})"
        f" AS v ({', '.join(name for _, name in varying)}) ON CONFLICT DO NOTHING"
        " RETURNING id, attempts, celery_id, worker, owner_id, root_id, parent_id),"
        f"{data} event AS (INSERT INTO {qn(TaskEvent._meta.db_table)} (record_id,"
        " kind, at, attempt, celery_id, worker, data) SELECT added.id, %s, %s,"
        f" added.attempts, added.celery_id, added.worker, {event_data} FROM added"
        f"{join}) SELECT id, celery_id, owner_id, root_id, parent_id FROM added"
    )


def reconnecting(write, *args, **kwargs):
    """Run a ledger write; after a lost connection, reconnect and run it again.

    Workers keep their database connection between tasks, so after a database
    restart the first write of each pool process meets a dead connection. Only
    outside a transaction: inside one, the caller's transaction died with the
    connection and must fail as a whole. A write whose COMMIT was lost in flight
    runs a second time; its conditional UPDATE then finds the record already
    moved and changes nothing (STARTED -> STARTED is the exception: it counts one
    more delivery and adds a second "started" event).
    """
    for delay in (*RECONNECT_DELAYS, None):
        try:
            return write(*args, **kwargs)
        except (InterfaceError, OperationalError):
            if delay is None or connection.in_atomic_block:
                raise
            connection.close()
            time.sleep(delay)
