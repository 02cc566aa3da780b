"""Tasks that exist only for tests; loaded by claw.test_settings.CELERY_IMPORTS.

Effects are counted in Redis (EFFECTS_KEY), so a test can tell whether a task's
effect happened once, twice or never, across processes.
"""

from __future__ import annotations

import os
import signal
import time

import redis
from django.conf import settings

from claw.celery import app
from tasks_app.progress import report_progress

EFFECTS_KEY = "claw-test:effects"


def redis_client() -> redis.Redis:
    # CLAW_TEST_EFFECTS_URL keeps the counters out of a broker a test wipes.
    url = os.environ.get("CLAW_TEST_EFFECTS_URL") or settings.CELERY_BROKER_URL
    return redis.Redis.from_url(url)


@app.task(name="tests.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tests.effect")
def effect(key: str, seconds: float = 0.0) -> str:
    """Sleep, then count one effect under key."""
    time.sleep(seconds)
    redis_client().hincrby(EFFECTS_KEY, key, 1)
    return key


@app.task(name="tests.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(name="tests.fail")
def fail(message: str = "boom") -> None:
    raise ValueError(message)


class Flaky(Exception):
    pass


@app.task(
    name="tests.always_flaky",
    autoretry_for=(Flaky,),
    max_retries=2,
    retry_backoff=0.1,
    retry_backoff_max=0.2,
    retry_jitter=False,
)
def always_flaky() -> None:
    raise Flaky("transient failure")


@app.task(name="tests.progress_loop")
def progress_loop(steps: int, delay: float = 0.0) -> int:
    for step in range(1, steps + 1):
        time.sleep(delay)
        report_progress(step, steps, f"step {step}")
    return steps


@app.task(name="tests.kill_self", max_retries=0)
def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="tests.bounded_effect", time_limit=8, soft_time_limit=6)
def bounded_effect(key: str, seconds: float = 0.0) -> str:
    """tests.effect with a short hard time limit, so the health check may call it
    lost within a test."""
    time.sleep(seconds)
    redis_client().hincrby(EFFECTS_KEY, key, 1)
    return key


@app.task(name="tests.total")
def total(values: list[int], extra: int = 0) -> int:
    """A chord callback: the header's results arrive as the first argument."""
    return sum(values) + extra
