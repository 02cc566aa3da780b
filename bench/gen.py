"""Fast synthetic ledger rows with generate_series, straight into a bench database."""

from __future__ import annotations

from bench.common import psql

RECORDS_SQL = """
INSERT INTO tasks_app_taskrecord (
    name, queue, priority, args, kwargs, options, state, progress_current,
    progress_total, progress_message, attempts, deliveries, celery_id, worker,
    created_at, started_at, finished_at, error, traceback, group_id,
    cancel_requested)
SELECT
    (ARRAY['tasks_app.ping', 'knowledge.vectorize_document',
           'conversations.generate', 'reports.export'])[1 + i % 4],
    'default', 5, '[]'::jsonb, '{{}}'::jsonb, '{{}}'::jsonb,
    (ARRAY['SUCCESS', 'SUCCESS', 'SUCCESS', 'FAILURE', 'PENDING', 'STARTED',
           'SUCCESS', 'REVOKED'])[1 + i % 8],
    0, 0, '', 1, 1, md5(i::text || '{tag}'), 'bench@host',
    {created} - (i % 86400) * interval '1 second',
    {created} - (i % 86400) * interval '1 second',
    {created} - (i % 86400) * interval '1 second' + interval '1 second',
    CASE WHEN i % 8 = 3 THEN 'ValueError: bad input ' || (i % 17) ELSE '' END,
    '', '', false
FROM generate_series(1, {n}) AS i
"""

EVENTS_SQL = """
INSERT INTO tasks_app_taskevent (kind, at, attempt, celery_id, worker, data, record_id)
SELECT 'succeeded', r.finished_at, 1, r.celery_id, r.worker, '{{}}'::jsonb, r.id
FROM tasks_app_taskrecord r WHERE r.id > {after}
"""


# From this many rows at once, the table's indexes and unique constraints (not
# its primary key) are dropped before the INSERT and built again after it: a
# build sorts once, where 15 indexes kept up to date row by row (a GIN trigram
# and a unique md5 among them) made 10M records take most of an hour.
REBUILD_FROM = 500_000
INDEXES_SQL = """
SELECT 'index', indexname, indexdef FROM pg_indexes i
WHERE tablename = 'tasks_app_taskrecord' AND NOT EXISTS (
    SELECT 1 FROM pg_constraint c
    WHERE c.conindid = format('%I.%I', i.schemaname, i.indexname)::regclass)
UNION ALL
SELECT 'unique', conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = 'tasks_app_taskrecord'::regclass AND contype = 'u'
"""


def fill(
    db: str, n: int, *, days_old: int = 0, events: bool = True, tag: str = ""
) -> None:
    """n records (mostly final, 1 s apart over a day), one event each."""
    after = int(psql("SELECT coalesce(max(id), 0) FROM tasks_app_taskrecord", db))
    created = f"(now() - interval '{days_old} days')"
    insert = RECORDS_SQL.format(n=n, tag=f"{db}-{tag}", created=created)
    if n < REBUILD_FROM:
        psql(insert, db)
    else:
        drop, build = _indexes(db)
        # Two transactions (one psql -c each): an index cannot be built over
        # the INSERT's pending (deferred) foreign key checks.
        psql(";\n".join([*drop, insert]), db)
        psql(";\n".join(["SET maintenance_work_mem = '512MB'", *build]), db)
    if events:
        psql(EVENTS_SQL.format(after=after), db)
    psql("ANALYZE", db)


def _indexes(db: str) -> tuple[list[str], list[str]]:
    """Statements dropping, then building again, the records' indexes and
    unique constraints (REBUILD_FROM)."""
    drop, build = [], []
    for line in psql(INDEXES_SQL, db).splitlines():
        kind, name, definition = line.split("|", 2)
        if kind == "index":
            drop.append(f"DROP INDEX {name}")
            build.append(definition)
        else:
            drop.append(f"ALTER TABLE tasks_app_taskrecord DROP CONSTRAINT {name}")
            build.append(
                f"ALTER TABLE tasks_app_taskrecord ADD CONSTRAINT {name} {definition}"
            )
    return drop, build
