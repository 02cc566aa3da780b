"""A cluster-wide rate limit: at most N starts per fixed window, counted in one place
that every worker shares.

Celery's own ``rate_limit`` is a token bucket inside each worker, so two workers
allow twice the rate. Here the counter lives in Redis (INCR of a key per window)
or, without Redis (the embedded stack, whose locmem cache is per process), in a
database row that conditional UPDATEs roll and count.

Callers over the limit are told when to come back: their place in line decides
which later window, so a burst spreads over the next windows instead of every
deferred caller retrying at once at the next boundary.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import F

from tasks_app.models import RateLimitWindow

logger = logging.getLogger(__name__)

# A far-future countdown would sit in the broker as an ETA message; past Redis'
# visibility timeout it is delivered again and again. Deferred callers come back
# at most this many windows ahead and ask again.
MAX_WINDOWS_AHEAD = 10


class RateLimited(Exception):
    """Over the limit; come back in ``retry_in`` seconds."""

    def __init__(self, key: str, limit: int, period: float, retry_in: float):
        self.retry_in = retry_in
        super().__init__(
            f"Rate limit {key} ({limit} starts per {period:g} s) reached; "
            f"deferred {retry_in:.1f} s"
        )


@dataclass(frozen=True)
class Slot:
    """A start that was allowed: at ``at`` (epoch seconds), nth of its window."""

    at: float
    window: int
    count: int


def take(key: str, *, limit: int, period: float, now: float | None = None) -> Slot:
    """Count one start under key; raise RateLimited when the window is full.

    Over-limit calls are counted too: the count is the caller's place in line.
    """
    now = time.time() if now is None else now
    window, count = _count(key, period, now)
    if count <= limit:
        return Slot(at=now, window=window, count=count)
    windows_ahead = min((count - limit - 1) // limit, MAX_WINDOWS_AHEAD - 1)
    next_start = (window + 1 + windows_ahead) * period
    # Spread the returning callers over the start of their window.
    jitter = random.uniform(0, min(period * 0.2, 2.0))
    raise RateLimited(key, limit, period, max(0.0, next_start - now) + jitter)


def take_slot(key: str, rate: tuple[int, float] | None) -> Slot | None:
    """take() under a parsed rate setting (claw.settings.parse_rate); None when
    the setting is empty (no limit)."""
    if rate is None:
        return None
    limit, period = rate
    return take(key, limit=limit, period=period)


def backend() -> str:
    chosen = settings.AI_RATE_LIMIT_BACKEND
    if chosen == "auto":
        return "redis" if settings.IS_REDIS_BROKER else "database"
    return chosen


def _count(key: str, period: float, now: float) -> tuple[int, int]:
    if backend() == "redis":
        try:
            return count_in_redis(key, period, now)
        except redis.RedisError as exc:
            # The broker answered a moment ago (this task was delivered); while
            # Redis is unreachable the database keeps counting.
            logger.warning("Rate limit %s counted in the database: %r", key, exc)
    return count_in_database(key, period, now)


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(
        settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2
    )


def count_in_redis(key: str, period: float, now: float) -> tuple[int, int]:
    """INCR the key of the current window; the key expires after two windows."""
    window = int(now // period)
    name = f"claw:ratelimit:{key}:{period:g}:{window}"
    pipe = _redis().pipeline()  # MULTI/EXEC: the count and its expiry together
    pipe.incr(name)
    pipe.expire(name, int(period * 2) + 1)
    count, _ = pipe.execute()
    return window, int(count)


def count_in_database(key: str, period: float, now: float) -> tuple[int, int]:
    """Roll the row to the current window if it is older, count one, read it back.

    The first UPDATE that touches the row locks it until commit (PostgreSQL; an
    IMMEDIATE transaction on SQLite locks the file at BEGIN), so the roll, the
    increment and the read are one step per caller: a concurrent caller waits,
    then sees the rolled window and counts after us. A row whose window is ahead
    of our clock (another machine's) keeps its window and counts us in it.
    """
    name = f"{key}:{period:g}"
    window = int(now // period)
    RateLimitWindow.objects.get_or_create(key=name, defaults={"window": window})
    rows = RateLimitWindow.objects.filter(key=name)
    with transaction.atomic():
        rows.filter(window__lt=window).update(window=window, count=0)
        rows.update(count=F("count") + 1)
        return rows.values_list("window", "count").get()
