"""Issue 18: the dashboard, the stats API and /metrics read rollups, not records.

For each size, records come from generate_series (bench/gen.py). Up to
FOLD_MAX records, each gets a realistic timeline of events (queued, started,
then succeeded/failed/cancelled by state) and the fold folds them all (its rate
is a row); the rollups are then rebuilt in SQL from the records (REBUILD) and
the bench checks that gives the same rows. Above FOLD_MAX only the SQL rebuild
runs (no events; nothing measured reads them), which is what makes 1M and 10M
take minutes. Each page is then requested through Django's test Client with the
stats cache off: p50 and p95 of 20 requests after one warm-up. Last, scenario 1
with and without a process folding every second.

AI replies too (the LLM metrics on /metrics): one finished assistant message per
record, up to MESSAGES_MAX, folded by the same fold up to FOLD_MAX (its
LlmRollup checked equal to LLM_ROLLUPS_SQL's) and rebuilt in SQL above it.

Sizes: BENCH_MONITORING_SIZES (comma-separated record counts), default
10k,1M,10M for a full run and 10k for --quick. 10M needs about 8 GB of disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.bench_throughput import CLAW_WORKER, claw_env, measure, rate_rows
from bench.common import ARTIFACTS, ROOT, flush_redis, page_times, psql, row, run_py
from bench.gen import fill

DB = "claw_bench_monitoring"
SIZES_FULL, SIZES_QUICK = (10_000, 1_000_000, 10_000_000), (10_000,)
TOKEN = "bench-metrics-token"
PAGES = {
    "dashboard (cache off)": "/admin/tasks_app/taskrecord/dashboard/",
    "API stats (cache off)": "/api/v1/tasks/stats/",
    "/metrics scrape": "/metrics",
}
TARGETS = {  # p50 for the pages, p95 for the scrape, at 10M (issue 18)
    "dashboard (cache off)": ("p50", 100),
    "API stats (cache off)": ("p50", 50),
    "/metrics scrape": ("p95", 100),
}

# queued at creation, started, then the final event of the record's state
TIMELINE_SQL = """
INSERT INTO tasks_app_taskevent (kind, at, attempt, celery_id, worker, data, record_id)
SELECT e.kind, e.at, 1, r.celery_id, r.worker, '{{}}'::jsonb, r.id
FROM tasks_app_taskrecord r
CROSS JOIN LATERAL (VALUES
    (0, 'queued', r.created_at - interval '50 milliseconds'),
    (1, 'started', r.started_at),
    (2, CASE r.state WHEN 'SUCCESS' THEN 'succeeded' WHEN 'FAILURE' THEN 'failed'
                     WHEN 'REVOKED' THEN 'cancelled' END, r.finished_at)
) AS e(n, kind, at)
WHERE r.id > {after} AND e.kind IS NOT NULL
  AND NOT (e.n = 2 AND r.state IN ('PENDING', 'STARTED'))
  AND NOT (e.n = 1 AND r.state = 'PENDING')
ORDER BY r.id, e.n
"""

FOLD = """
import json, time, django
django.setup()
from tasks_app import rollups
t = time.perf_counter()
n = rollups.fold(max_batches=10**9)
elapsed = time.perf_counter() - t
print(json.dumps({"events": n, "seconds": elapsed}))
"""

# The rollups the fold makes of TIMELINE_SQL's events, from one pass over the
# records (the same timeline: queued 50 ms before created_at, started, the final
# event by state), written in place of the table's rows. {bounds} and {buckets}
# come from tasks_app.rollups.BOUNDS (REBUILD fills them in).
ROLLUPS_SQL = """
WITH ev AS (
  SELECT r.name, r.queue, e.outcome, e.at,
         extract(epoch FROM e.at - e.prev)::float8 AS seconds
  FROM tasks_app_taskrecord r
  CROSS JOIN LATERAL (VALUES
      (0, 'sent', r.created_at - interval '50 milliseconds', NULL::timestamptz),
      (1, 'started', r.started_at, r.created_at - interval '50 milliseconds'),
      (2, CASE r.state WHEN 'SUCCESS' THEN 'succeeded' WHEN 'FAILURE' THEN 'failed'
                       WHEN 'REVOKED' THEN 'revoked' END, r.finished_at, r.started_at)
  ) AS e(n, outcome, at, prev)
  WHERE e.outcome IS NOT NULL
    AND NOT (e.n = 2 AND r.state IN ('PENDING', 'STARTED'))
    AND NOT (e.n = 1 AND r.state = 'PENDING')
), m AS (
  SELECT to_timestamp(floor(extract(epoch FROM at) / 60) * 60) AS start,
         name, queue, outcome, seconds, count(*) AS n
  FROM ev GROUP BY 1, 2, 3, 4, 5
), b AS (
  SELECT m.*, (SELECT count(*) FROM unnest({bounds}) x WHERE x < m.seconds) AS bucket
  FROM m
), s AS (
  SELECT 60 AS span, start, name, queue, outcome, seconds, bucket, n FROM b
  UNION ALL
  SELECT 3600, to_timestamp(floor(extract(epoch FROM start) / 3600) * 3600),
         name, queue, outcome, seconds, bucket, n FROM b
  UNION ALL
  SELECT 0, to_timestamp(0), name, queue, outcome, seconds, bucket, n FROM b
)
INSERT INTO tasks_app_taskrollup
    (span, start, name, queue, outcome, count, observed, seconds, buckets)
SELECT span, start, name, queue, outcome, sum(n),
       coalesce(sum(n) FILTER (WHERE seconds IS NOT NULL), 0),
       coalesce(sum(n * seconds), 0), jsonb_build_array({buckets})
FROM s GROUP BY 1, 2, 3, 4, 5
"""

# Folding 27M events in Python would take most of an hour, and the fold is not
# what the pages' rows measure (it has its own row where the bench folds), so
# above FOLD_MAX the rollups are rebuilt in SQL and the watermark moved past
# every event. Where the bench folds, it checks that this gives the fold's rows.
REBUILD = """
import json, sys, time, django
django.setup()
from django.db import connection, transaction
from tasks_app import rollups
bounds = "ARRAY[" + ",".join(repr(float(b)) for b in rollups.BOUNDS) + "]::float8[]"
buckets = ", ".join(
    f"coalesce(sum(n) FILTER (WHERE seconds IS NOT NULL AND bucket = {i}), 0)"
    for i in range(len(rollups.BOUNDS) + 1))
t = time.perf_counter()
with transaction.atomic(), connection.cursor() as cursor:
    cursor.execute("DELETE FROM tasks_app_taskrollup")
    cursor.execute(sys.argv[1].format(bounds=bounds, buckets=buckets))
    cursor.execute(
        "INSERT INTO tasks_app_rollupwatermark (id, last_id, gaps, folded_at) "
        "SELECT 1, coalesce(max(id), 0), '{}'::jsonb, now() FROM tasks_app_taskevent "
        "ON CONFLICT (id) DO UPDATE SET last_id = excluded.last_id, gaps = '{}', "
        "folded_at = excluded.folded_at")
    cursor.execute(sys.argv[2].format(
        bounds=bounds,
        buckets=", ".join(
            f"count(*) FILTER (WHERE latency_ms IS NOT NULL AND bucket = {i})"
            for i in range(len(rollups.BOUNDS) + 1))))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

# Finished AI replies of three models, some never timed (latency NULL), with
# reply times spread over the histogram's slots.
MESSAGES_SQL = """
INSERT INTO claw_message (conversation_id, role, content, status, truncated,
    passages, provider, model, prompt_tokens, completion_tokens, tokens_estimated,
    latency_ms, error, created_at, started_at, finished_at)
SELECT {conversation}, 'assistant', '', 'done', false, '[]'::jsonb, 'fake',
       (ARRAY['small', 'big', 'tiny'])[1 + i % 3], 100 + i % 900, 10 + i % 300,
       false, CASE WHEN i % 50 = 0 THEN NULL ELSE 1 + (i * 37) % 90000 END, '',
       now(), now(), now()
FROM generate_series(1, {n}) AS i
"""
MESSAGES_MAX = 1_000_000
CONVERSATION = """
import django
django.setup()
from django.contrib.auth import get_user_model
from claw.models import Conversation
user, _ = get_user_model().objects.get_or_create(username="bench-llm")
print(Conversation.objects.get_or_create(owner=user, title="bench")[0].pk)
"""
# What claw.metrics.fold_replies makes of the finished replies, in one pass,
# in place of the table's rows, and the messages' watermark past them.
LLM_ROLLUPS_SQL = """
DELETE FROM claw_llmrollup;
INSERT INTO claw_llmrollup
    (model, prompt_tokens, completion_tokens, timed, latency_ms, buckets)
SELECT model, sum(prompt_tokens), sum(completion_tokens), count(latency_ms),
       coalesce(sum(latency_ms), 0), jsonb_build_array({buckets})
FROM (SELECT m.*, (SELECT count(*) FROM unnest({bounds}) x
                   WHERE x < m.latency_ms / 1000.0::float8) AS bucket
      FROM claw_message m
      WHERE role = 'assistant' AND status NOT IN ('pending', 'generating')
        AND model <> '') r
GROUP BY model;
INSERT INTO tasks_app_rollupwatermark (id, last_id, gaps, folded_at)
SELECT 2, coalesce(max(id), 0), '{{}}'::jsonb, now() FROM claw_message
ON CONFLICT (id) DO UPDATE SET last_id = excluded.last_id, gaps = '{{}}',
    folded_at = excluded.folded_at
"""
LLM_FINGERPRINT = """
SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', model, prompt_tokens,
    completion_tokens, timed, latency_ms, buckets::text), ',' ORDER BY model))
FROM claw_llmrollup
"""

# One line standing for the whole rollup table, to compare the fold's rows with
# REBUILD's (sums of seconds rounded: they are added in a different order).
FINGERPRINT = """
SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', span, extract(epoch FROM start),
    name, queue, outcome, count, observed, round(seconds::numeric, 3), buckets::text),
    ',' ORDER BY span, start, name, queue, outcome))
FROM tasks_app_taskrollup
"""
# Sizes up to this one get a timeline of events and a fold (and the check);
# larger ones get records and REBUILD only: no page measured reads events.
FOLD_MAX = 100_000

FOLD_LOOP = """
import sys, time, django
django.setup()
from tasks_app import rollups
while True:
    rollups.fold()
    time.sleep(float(sys.argv[1]))
"""
# Seconds between folds while scenario 1 runs: harsher than the default 10 s, so
# a short run sees several folds.
FOLD_EVERY = 1.0


def throughput_with_and_without_fold(quick: bool) -> list[dict]:
    """Scenario 1 (c), CLAW tiny tasks, after a warm-up run: without the fold,
    twice with a process folding the rollups every FOLD_EVERY seconds, and
    without again, back to back on one database. The order (ABBA) cancels a
    steady drift of the machine's load; the two runs without show the noise."""
    n = 1500 if quick else 5000
    env = claw_env("claw_bench_fold_throughput")
    flush_redis()
    measure("claw", n, env, "claw", extra=CLAW_WORKER)  # warm-up, not reported
    runs = []
    for label, folding in (
        ("no fold", False),
        (f"folding every {FOLD_EVERY:g} s", True),
        (f"folding every {FOLD_EVERY:g} s, again", True),
        ("no fold, again", False),
    ):
        flush_redis()
        runs.append((label, folding, _measure(env, n, folding)))
    flush_redis()
    rows = []
    for label, _, result in runs:
        rows += rate_rows("1 tiny tasks", f"(c) CLAW, {label}", result)
    without = [r["rate"] for _, folding, r in runs if not folding]
    with_fold = [r["rate"] for _, folding, r in runs if folding]
    mean = sum(without) / len(without)
    ratio = sum(with_fold) / len(with_fold) / mean if mean else 0.0
    noise = abs(without[0] - without[1]) / mean if mean else 0.0
    verdict = "within" if abs(ratio - 1) <= max(noise, 0.05) else "OUTSIDE"
    rows.append(
        row("1 tiny tasks", "with fold / without (means of two runs)", round(ratio, 2),
            "x", "unchanged within noise",
            f"{verdict} noise: the two runs without differ by {noise:.0%}")
    )  # fmt: skip
    return rows


def _measure(env: dict, n: int, folding: bool) -> dict:
    if not folding:
        return measure("claw", n, env, "claw", extra=CLAW_WORKER)
    folder = subprocess.Popen(
        [sys.executable, "-c", FOLD_LOOP, str(FOLD_EVERY)], cwd=ROOT, env=env
    )
    try:
        return measure("claw", n, env, "claw", extra=CLAW_WORKER)
    finally:
        folder.terminate()
        folder.wait(30)


def sizes(quick: bool) -> tuple[int, ...]:
    given = os.environ.get("BENCH_MONITORING_SIZES")
    if given:
        return tuple(int(s) for s in given.split(","))
    return SIZES_QUICK if quick else SIZES_FULL


def grow(env: dict, size: int, have: int) -> list[dict]:
    """Records up to `size` and their rollups: folded from events up to
    FOLD_MAX (a row for the fold's rate, checked against REBUILD), rebuilt in
    SQL above it (a row for how long the records and rollups took)."""
    after = int(psql("SELECT coalesce(max(id), 0) FROM tasks_app_taskrecord", DB))
    started = time.perf_counter()
    fill(DB, size - have, events=False, tag=str(size))
    add_replies(env, min(size, MESSAGES_MAX) - min(have, MESSAGES_MAX))
    if size > FOLD_MAX:
        generated = time.perf_counter() - started
        rebuilt = rebuild_rollups(env)
        psql("VACUUM ANALYZE tasks_app_taskrollup", DB)
        return [
            row("18 rollups", f"generate @ {size:,} records", round(generated, 1), "s",
                "", f"{size - have:,} records by generate_series; rollups rebuilt "
                f"from all records in SQL in {rebuilt:.1f} s")
        ]  # fmt: skip
    psql(TIMELINE_SQL.format(after=after), DB)
    psql("ANALYZE", DB)
    fold = _child(env, FOLD)
    folded = psql(FINGERPRINT, DB), psql(LLM_FINGERPRINT, DB)
    rebuild_rollups(env)
    same = (psql(FINGERPRINT, DB), psql(LLM_FINGERPRINT, DB)) == folded
    rate = fold["events"] / fold["seconds"] if fold["seconds"] else 0
    return [
        row("18 rollups", f"fold @ {size:,} records", round(rate), "events/s", "",
            f"{fold['events']:,} events and replies in {fold['seconds']:.1f} s; SQL rebuild "
            + ("gives the same rows" if same else "DIFFERS from the fold"))
    ]  # fmt: skip


def add_replies(env: dict, n: int) -> None:
    if n <= 0:
        return
    conversation = int(run_py(["-c", CONVERSATION], env).strip().splitlines()[-1])
    psql(MESSAGES_SQL.format(conversation=conversation, n=n), DB)


def rebuild_rollups(env: dict) -> float:
    """The rollups of every record in env's database, as the fold would make
    them of TIMELINE_SQL's events (REBUILD); returns the seconds taken."""
    return _child(env, REBUILD, ROLLUPS_SQL, LLM_ROLLUPS_SQL)["seconds"]


def _child(env: dict, script: str, *args: str) -> dict:
    out = run_py(["-c", script, *args], env, timeout=3600)
    return json.loads(out.strip().splitlines()[-1])


def page_rows(env: dict, size: int) -> list[dict]:
    rows = []
    results = page_times(env, PAGES, 20, TOKEN)
    for label, r in results.items():
        stat, limit = TARGETS[label]
        metric = f"{label} {stat} @ {size:,}"
        if r["status"] != 200:
            rows.append(
                row("18 monitoring", metric, "", "ms", "", f"HTTP {r['status']}")
            )
            continue
        note = (
            f"p50 {r['p50']:.1f}, p95 {r['p95']:.1f}, max {r['max']:.0f} ms;"
            f" web process CPU p50 {r['cpu_p50']:.1f} ms"
        )
        if size >= 10_000_000:
            note = ("met; " if r[stat] < limit else "MISSED; ") + note
        rows.append(
            row("18 monitoring", metric, round(r[stat], 1), "ms",
                f"< {limit} at 10M", note)
        )  # fmt: skip
    return rows


def run(quick: bool = False) -> list[dict]:
    env = claw_env(DB)
    env.update(
        ALLOWED_HOSTS="testserver,127.0.0.1,localhost",
        STATIC_ROOT=str(ARTIFACTS / "static"),
        CLAW_STATS_CACHE_SECONDS="0",
        METRICS_TOKEN=TOKEN,
    )
    run_py(["manage.py", "collectstatic", "--noinput", "-v", "0"], env)
    rows, have = [], 0
    for size in sizes(quick):
        rows += grow(env, size, have)
        have = size
        rows += page_rows(env, size)
    return rows + throughput_with_and_without_fold(quick)
