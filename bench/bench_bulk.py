"""Scenario 11: submitting 10,000 records, in bulk and one by one (issue 21).

In a child process with CLAW's settings on PostgreSQL + Redis, no worker:
1. services.submit_many of 10,000 tasks_app.ping in one transaction: the
   records and events (one statement per ~2,500 records), the commit, and the
   10,000 messages published after it (pipelined rounds of 1,000);
2. 10,000 services.submit() calls, each in its own transaction as an API request
   makes it (record + event, commit, one publish).
Each time runs from before the first write to after the last message is in
Redis; the broker's queue length is checked after each.
"""

from __future__ import annotations

import json

from bench.bench_throughput import claw_env
from bench.common import REDIS_URL, flush_redis, row, run_py

FULL, QUICK = 10_000, 1_000
DB = "claw_bench_bulk"
S = "11 bulk submit"

CHILD = """
import json, sys, time, django
django.setup()
import redis
from django.db import transaction
from tasks_app import services
from tasks_app.models import TaskRecord

n = int(sys.argv[1])
r = redis.Redis.from_url(sys.argv[2])
queue = services.route_queue("tasks_app.ping")

def queued():
    return sum(r.llen(k) for k in r.scan_iter(queue + "*"))

def timed(fn):
    before = queued()
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started, queued() - before

written = {}

def bulk():
    with transaction.atomic():
        started = time.perf_counter()
        services.submit_many(services.Submission("tasks_app.ping") for _ in range(n))
        written["s"] = time.perf_counter() - started  # before commit and publish

def single():
    for _ in range(n):
        services.submit("tasks_app.ping")  # autocommit: its own transaction

# one warm-up of each (connections, the task registry, prepared statements)
services.submit_many([services.Submission("tasks_app.ping")])
services.submit("tasks_app.ping")
bulk_s, bulk_q = timed(bulk)
single_s, single_q = timed(single)
print(json.dumps({"bulk": bulk_s, "bulk_queued": bulk_q, "written": written["s"], "single": single_s,
                  "single_queued": single_q, "records": TaskRecord.objects.count()}))
"""


def run(quick: bool = False) -> list[dict]:
    n = QUICK if quick else FULL
    env = claw_env(DB)
    flush_redis()
    out = run_py(["-c", CHILD, str(n), REDIS_URL], env, timeout=900)
    r = json.loads(out.strip().splitlines()[-1])
    flush_redis()
    met = "met" if r["bulk"] < 2 else "MISSED"
    if n != FULL:
        met = f"target is for {FULL:,}"
    return [
        row(S, f"submit_many {n:,} records", round(r["bulk"], 2), "s", "< 2 s",
            f"{met}; {n / r['bulk']:,.0f} records/s; records and events written in "
            f"{r['written']:.2f} s, then commit and publish; {r['bulk_queued']:,} "
            "messages in Redis"),
        row(S, f"{n:,} single submits", round(r["single"], 2), "s", "",
            f"{n / r['single']:,.0f} records/s, each its own transaction; "
            f"bulk is {r['single'] / r['bulk']:.1f}x faster; "
            f"{r['single_queued']:,} messages in Redis"),
    ]  # fmt: skip
