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


def fill(
    db: str, n: int, *, days_old: int = 0, events: bool = True, tag: str = ""
) -> None:
    """n records (mostly final, 1 s apart over a day), one event each."""
    after = int(psql("SELECT coalesce(max(id), 0) FROM tasks_app_taskrecord", db))
    created = f"(now() - interval '{days_old} days')"
    psql(RECORDS_SQL.format(n=n, tag=f"{db}-{tag}", created=created), db)
    if events:
        psql(EVENTS_SQL.format(after=after), db)
    psql("ANALYZE", db)
