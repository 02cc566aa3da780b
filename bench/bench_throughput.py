"""Scenario 1: tiny tasks end to end, worker concurrency 2, three stacks in one run;
then each stack at its best worker concurrency (2, 4 or 8, fewer tasks per run).

(a) bare Celery on Redis with ignore_result (bench/bare_app.py, no Django);
(b) stock Celery + django-celery-results (track_started, result_extended, persistent
    connections; bench/dcr_settings.py on a fresh database);
(c) CLAW: services.submit -> worker -> record SUCCESS, result, ledger and events
    (claw.settings on a fresh, migrated database); then CLAW again with STARTED
    written before every run (CLAW_STARTED_AFTER_SECONDS=0), not in --quick.

The clock runs from the first submit to the last completion seen by polling the
stack's own record of completion (a Redis counter, TaskResult rows, TaskRecord rows).
The worker is up and idle before the clock starts.
"""

from __future__ import annotations

import json
import sys
import time

from bench.common import (
    REDIS_URL,
    Worker,
    base_env,
    flush_redis,
    fresh_db,
    row,
    run_py,
)

FULL, QUICK = 5000, 300
BATCH = 500
TIMEOUT = 110.0


def _poll(done_count, n: int, started: float) -> tuple[float, int]:
    done = 0
    while time.monotonic() - started < TIMEOUT:
        done = done_count()
        if done >= n:
            break
        time.sleep(0.05)
    return time.monotonic() - started, done


def submit_claw(n: int) -> None:
    """n services.submit() of tasks_app.ping in transactions of BATCH (in a
    process with CLAW's settings, after django.setup())."""
    from django.db import transaction

    from tasks_app import services

    for start in range(0, n, BATCH):
        with transaction.atomic():
            for _ in range(min(BATCH, n - start)):
                services.submit("tasks_app.ping")


def child(mode: str, n: int) -> dict:
    """Runs in a subprocess with the stack's own settings; returns the timings."""
    cpu = time.process_time()
    if mode == "bare":
        import redis

        from bench.bare_app import COUNTER, app, noop

        r = redis.Redis.from_url(REDIS_URL)
        started = time.monotonic()
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                noop.apply_async(producer=producer)
        submit = time.monotonic() - started
        elapsed, done = _poll(lambda: int(r.get(COUNTER) or 0), n, started)
    elif mode == "dcr":
        import django

        django.setup()  # DJANGO_SETTINGS_MODULE=bench.dcr_settings
        from django_celery_results.models import TaskResult

        from bench.dcr_app import app, noop

        started = time.monotonic()
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                noop.apply_async(producer=producer)
        submit = time.monotonic() - started
        done_q = TaskResult.objects.filter(status="SUCCESS")
        elapsed, done = _poll(done_q.count, n, started)
    else:  # claw, embedded
        import django

        django.setup()
        from tasks_app.models import TaskRecord

        # Only this run's records: bench_monitoring runs several on one database.
        before = TaskRecord.objects.order_by("-id").values_list("id", flat=True)
        before = before.first() or 0
        started = time.monotonic()
        submit_claw(n)
        submit = time.monotonic() - started
        done_q = TaskRecord.objects.filter(
            id__gt=before, state=TaskRecord.State.SUCCESS
        )
        elapsed, done = _poll(done_q.count, n, started)
    cpu = time.process_time() - cpu  # submitting and polling
    return {"n": n, "done": done, "submit": submit, "elapsed": elapsed, "cpu": cpu}


# CLAW's worker runs as docker-compose's worker-default does: on the short-task
# queues, where each pool process prefetches CLAW_SHORT_QUEUE_PREFETCH (4) messages.
CLAW_WORKER = ("--queues", "default,notification_default")


def measure(
    mode: str, n: int, env: dict, app: str, extra: tuple = (), concurrency: int = 2
) -> dict:
    with Worker(
        app, env, f"throughput-{mode}", concurrency=concurrency, extra=extra
    ) as worker:
        worker.wait_ready()
        out = run_py(["-m", "bench.bench_throughput", mode, str(n)], env, timeout=240)
    return json.loads(out.strip().splitlines()[-1])


def claw_env(db: str) -> dict:
    env = base_env(
        DATABASE_URL=fresh_db(db),
        CELERY_BROKER_URL=REDIS_URL,
        DJANGO_SETTINGS_MODULE="claw.settings",
        DEBUG="false",
        HTTPS_ONLY="false",
    )
    run_py(["manage.py", "migrate", "--noinput", "-v", "0"], env)
    return env


def rate_rows(scenario: str, label: str, r: dict, target: str = "", note="") -> list:
    rate = r["done"] / r["elapsed"] if r["elapsed"] else 0.0
    r["rate"] = rate
    extra = "" if r["done"] >= r["n"] else f"only {r['done']} of {r['n']} in time; "
    return [
        row(scenario, f"{label} tasks/s", round(rate, 1), "tasks/s", target,
            f"{extra}{r['n']} tasks in {r['elapsed']:.1f} s{note}"),
        row(scenario, f"{label} submit time", round(r["submit"], 2), "s", "",
            f"{r['n'] / r['submit']:.0f} submits/s" if r["submit"] else ""),
    ]  # fmt: skip


def measure_stack(stack: str, n: int, concurrency: int = 2, **claw: str) -> dict:
    """One scenario-1 run of a stack on a fresh database and an empty Redis;
    claw: settings for CLAW's worker and submitter (environment variables)."""
    flush_redis()
    if stack == "bare":
        env = base_env(BENCH_REDIS_URL=REDIS_URL)
        result = measure("bare", n, env, "bench.bare_app", concurrency=concurrency)
    elif stack == "dcr":
        env = base_env(
            BENCH_DATABASE_URL=fresh_db("claw_bench_dcr"),
            BENCH_REDIS_URL=REDIS_URL,
            DJANGO_SETTINGS_MODULE="bench.dcr_settings",
        )
        run_py(["-m", "django", "migrate", "--noinput", "-v", "0"], env)
        result = measure("dcr", n, env, "bench.dcr_app", concurrency=concurrency)
    else:
        env = {**claw_env("claw_bench_throughput"), **claw}
        result = measure(
            "claw", n, env, "claw", extra=CLAW_WORKER, concurrency=concurrency
        )
    flush_redis()
    return result


STACKS = (
    ("bare", "(a) bare Celery"),
    ("dcr", "(b) Celery + django-celery-results"),
    ("claw", "(c) CLAW"),
)
CONCURRENCIES = (2, 4, 8)
SEARCH_N = 2000  # tasks per run of the concurrency search (9 runs)


def ratio_rows(s: str, label: str, claw: dict, bare: dict, dcr: dict) -> list:
    ra = claw["rate"] / bare["rate"] if bare["rate"] else 0.0
    rb = claw["rate"] / dcr["rate"] if dcr["rate"] else 0.0
    return [
        row(s, f"CLAW / bare{label}", round(ra, 2), "x", ">= 0.6",
            "met" if ra >= 0.6 else "MISSED"),
        row(s, f"CLAW / django-celery-results{label}", round(rb, 2), "x", ">= 1.5",
            "met" if rb >= 1.5 else "MISSED"),
    ]  # fmt: skip


def best_concurrency_rows(s: str, n: int, concurrencies=CONCURRENCIES) -> list:
    """Each stack at the best of CONCURRENCIES, so the ratio is not an artifact
    of one setting; n tasks per run."""
    best: dict[str, tuple[int, dict]] = {}
    tried: dict[str, list[str]] = {}
    for stack, _ in STACKS:
        for concurrency in concurrencies:
            r = measure_stack(stack, n, concurrency)
            rate_rows(s, "", r)  # sets r["rate"]
            tried.setdefault(stack, []).append(f"c={concurrency}: {r['rate']:.0f}")
            if stack not in best or r["rate"] > best[stack][1]["rate"]:
                best[stack] = (concurrency, r)
    rows = []
    for stack, label in STACKS:
        concurrency, r = best[stack]
        note = f" at -c {concurrency} (best of {', '.join(tried[stack])} tasks/s)"
        rows += rate_rows(s, f"{label}, best concurrency,", r, note=note)[:1]
    results = {stack: best[stack][1] for stack, _ in STACKS}
    return rows + ratio_rows(
        s, " (each at its best)", results["claw"], results["bare"], results["dcr"]
    )


def eager_started_rows(s: str, n: int, results: dict) -> list:
    """CLAW again with STARTED written before every run
    (CLAW_STARTED_AFTER_SECONDS=0): what the default's late starts save,
    measured beside it in the same run."""
    r = measure_stack("claw", n, CLAW_STARTED_AFTER_SECONDS="0")
    rows = rate_rows(s, "(c) CLAW, STARTED written first (0 s)", r)[:1]
    bare, dcr, claw = (results[k]["rate"] for k in ("bare", "dcr", "claw"))
    rows[0]["note"] += (
        f"; {r['rate'] / claw:.2f}x the default, {r['rate'] / bare:.2f}x bare, "
        f"{r['rate'] / dcr:.2f}x django-celery-results"
    )
    return rows


def run(quick: bool = False) -> list[dict]:
    n = QUICK if quick else FULL
    s = "1 tiny tasks"
    results = {stack: measure_stack(stack, n) for stack, _ in STACKS}
    rows = []
    for stack, label in STACKS:
        rows += rate_rows(s, label, results[stack])
    rows += ratio_rows(s, "", results["claw"], results["bare"], results["dcr"])
    if quick:  # a smoke run: two settings show the search works
        return rows + best_concurrency_rows(s, QUICK, CONCURRENCIES[:2])
    rows += eager_started_rows(s, n, results)
    return rows + best_concurrency_rows(s, SEARCH_N)


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], int(sys.argv[2]))))
