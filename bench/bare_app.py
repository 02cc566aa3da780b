"""Bare Celery on Redis, no Django, ignore_result: the baseline for scenario 1.

The no-op task counts itself with one Redis INCR so the driver can see completions.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

BROKER = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
COUNTER = "bench:bare:done"

app = Celery("bare", broker=BROKER)
app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=4)
_redis = None


@app.task(name="bench.noop")
def noop() -> None:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER)
    _redis.incr(COUNTER)
