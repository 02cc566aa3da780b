"""The scenario 1 worker alone: how fast CLAW's worker empties a full queue.

    python -m bench.drain [--n 4000] [--c 2] [--pool prefork|threads] [NAME=VALUE ...]

Submits n tasks_app.ping with no worker running (bench_throughput.submit_claw, as
scenario 1 does), then starts the scenario's worker (its queues, -c c)
with NAME=VALUE added to its environment, and times from the moment it is ready
until every record is SUCCESS. Scenario 1 runs the submitter and the worker at
once on the same two cores; this separates the worker's own rate (bench/NOTES.md,
issue 21). Not a scenario of bench.run (its name does not start with bench_).
"""

from __future__ import annotations

import argparse
import sys
import time

import psycopg

from bench.bench_throughput import CLAW_WORKER, claw_env
from bench.common import Worker, flush_redis, run_py

DB = "claw_bench_drain"
SUBMIT = """
import sys, django
django.setup()
from bench.bench_throughput import submit_claw
submit_claw(int(sys.argv[1]))
"""


def drain(n: int, concurrency: int, pool: str, extra: dict[str, str]) -> dict:
    flush_redis()
    env = claw_env(DB)
    env.update(extra)
    run_py(["-c", SUBMIT, str(n)], env, timeout=600)
    done_sql = "SELECT count(*) FROM tasks_app_taskrecord WHERE state = 'SUCCESS'"
    options = (*CLAW_WORKER, "--pool", pool)
    # one connection, not a psql process per poll: starting psql 20 times a
    # second took 15 % of the two cores from the worker being measured
    db = psycopg.connect(env["DATABASE_URL"], autocommit=True)
    with Worker("claw", env, "drain", concurrency=concurrency, extra=options) as w:
        w.wait_ready()
        started = time.monotonic()
        done = 0
        while time.monotonic() - started < 300:
            done = db.execute(done_sql).fetchone()[0]
            if done >= n:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
    db.close()
    flush_redis()
    return {"n": n, "done": done, "seconds": elapsed, "rate": done / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--c", type=int, default=2)
    parser.add_argument("--pool", default="prefork", choices=("prefork", "threads"))
    parser.add_argument("env", nargs="*", help="NAME=VALUE for the worker")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    r = drain(args.n, args.c, args.pool, extra)
    print(
        f"drain -c {args.c} --pool {args.pool} {extra or ''}: {r['done']} of "
        f"{r['n']} in {r['seconds']:.2f} s = {r['rate']:.0f} tasks/s"
    )
    return 0 if r["done"] >= r["n"] else 1


if __name__ == "__main__":
    sys.exit(main())
