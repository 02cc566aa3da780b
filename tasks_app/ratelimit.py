"""A cluster-wide rate limit: at most N starts per fixed window, counted in one place
that every worker shares.

Celery's own ``rate_limit`` is a token bucket inside each worker, so two workers
allow twice the rate. Here the counter lives in Redis (INCR of a key per window)
or, without Redis (the embedded stack, whose locmem cache is per process), in a
database row that conditional UPDATEs roll and count.

Callers over the limit are told when to come back: their place in line decides
which later window, so a burst spreads over the next windows instead of every
deferred caller retrying at once at the next boundary.

take_fair() shares a limit between users (AI replies): while several users ask,
each gets an equal share of a window's starts, so one user's flood cannot
defer another user's replies until they fail (see fair_share).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import F

from tasks_app.models import RateLimitWindow

Decision = tuple[bool, int, int]  # (allowed, starts or place in user's line, share)

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


def take_slot(
    key: str, rate: tuple[int, float] | None, user: int | None = None
) -> Slot | None:
    """take() (take_fair() for a user) under a parsed rate setting
    (claw.settings.parse_rate); None when the setting is empty (no limit)."""
    if rate is None:
        return None
    limit, period = rate
    if user is not None:
        return take_fair(key, user, limit=limit, period=period)
    return take(key, limit=limit, period=period)


def fair_share(limit: int, active_users: int) -> int:
    """Starts one user may take in a window while active_users users ask.

    A user is active from their first ask in a window to the end of the next
    one, so a user deferred to the next window still holds their share there.
    """
    return max(1, math.ceil(limit / max(1, active_users)))


def take_fair(
    key: str, user: int, *, limit: int, period: float, now: float | None = None
) -> Slot:
    """Count one start of user under key, within the user's fair share.

    Allowed while the window has starts left and the user has taken fewer than
    fair_share(limit, users active in this window or the last). A refused caller
    comes back in the next window, or later by their place in their own user's
    line (their share per window), so another user's line never pushes them back.
    """
    now = time.time() if now is None else now
    window = int(now // period)
    allowed, place, share = _decide(key, str(user), limit, period, window)
    if allowed:
        return Slot(at=now, window=window, count=place)
    windows_ahead = min((place - 1) // share, MAX_WINDOWS_AHEAD - 1)
    next_start = (window + 1 + windows_ahead) * period
    jitter = random.uniform(0, min(period * 0.2, 2.0))
    raise RateLimited(key, limit, period, max(0.0, next_start - now) + jitter)


def _decide(key: str, user: str, limit: int, period: float, window: int) -> Decision:
    if backend() == "redis":
        try:
            return decide_in_redis(key, user, limit, period, window)
        except redis.RedisError as exc:
            logger.warning("Rate limit %s counted in the database: %r", key, exc)
    return decide_in_database(key, user, limit, period, window)


# KEYS: the window's starts, its users' starts (hash), the last window's users'
# starts, the window's refused callers per user. ARGV: user, limit, expiry.
_FAIR_SCRIPT = """
local starts = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('HSETNX', KEYS[2], ARGV[1], 0)
redis.call('EXPIRE', KEYS[2], ARGV[3])
local active = redis.call('HLEN', KEYS[2])
for _, u in ipairs(redis.call('HKEYS', KEYS[3])) do
  if redis.call('HEXISTS', KEYS[2], u) == 0 then active = active + 1 end
end
local limit = tonumber(ARGV[2])
local share = math.max(1, math.ceil(limit / active))
local mine = tonumber(redis.call('HGET', KEYS[2], ARGV[1]))
if starts < limit and mine < share then
  redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
  return {1, starts + 1, share}
end
local place = redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
redis.call('EXPIRE', KEYS[4], ARGV[3])
return {0, place, share}
"""


def decide_in_redis(
    key: str, user: str, limit: int, period: float, window: int
) -> Decision:
    """One Lua script, so the check and the count are one step for every worker."""
    base = f"claw:fair:{key}:{period:g}"
    keys = [
        f"{base}:{window}",
        f"{base}:{window}:users",
        f"{base}:{window - 1}:users",
        f"{base}:{window}:refused",
    ]
    allowed, place, share = _redis().eval(
        _FAIR_SCRIPT, len(keys), *keys, user, limit, int(period * 2) + 1
    )
    return bool(allowed), int(place), int(share)


def decide_in_database(
    key: str, user: str, limit: int, period: float, window: int
) -> Decision:
    """The same on RateLimitWindow rows: the key's row (starts of its window,
    locked first, so callers take turns), and per user a row of starts and a row
    of refused callers, each with the window it counts."""
    name = f"fair:{key}:{period:g}"
    for row in (name, f"{name}:user:{user}", f"{name}:refused:{user}"):
        RateLimitWindow.objects.get_or_create(key=row, defaults={"window": window})
    with transaction.atomic():
        rows = RateLimitWindow.objects.select_for_update()
        total = _rolled(rows.get(key=name), window)
        mine = _rolled(rows.get(key=f"{name}:user:{user}"), window)
        active = RateLimitWindow.objects.filter(
            key__startswith=f"{name}:user:", window__gte=window - 1
        ).count()
        share = fair_share(limit, active)
        if total.count < limit and mine.count < share:
            for row in (total, mine):
                row.count += 1
                row.save(update_fields=["window", "count"])
            return True, total.count, share
        refused = _rolled(rows.get(key=f"{name}:refused:{user}"), window)
        refused.count += 1
        refused.save(update_fields=["window", "count"])
        mine.save(update_fields=["window", "count"])  # this window: active
        return False, refused.count, share


def _rolled(row: RateLimitWindow, window: int) -> RateLimitWindow:
    """The row counting from zero if it counted an older window."""
    if row.window < window:
        row.window, row.count = window, 0
    return row


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
