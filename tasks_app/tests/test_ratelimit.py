"""The cluster-wide rate limit: its two counters against real PostgreSQL, Redis and
SQLite, with concurrent callers."""

from __future__ import annotations

import contextlib
import json
import uuid

import pytest

from claw.tests.conftest import in_threads
from tasks_app import ratelimit
from tests.test_smoke_embedded import embedded_env, manage

BACKENDS = ["database", "redis"]


@pytest.fixture(params=BACKENDS)
def backend(request, settings, redis_broker):
    settings.AI_RATE_LIMIT_BACKEND = request.param
    return request.param


def key() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.mark.django_db
def test_auto_uses_redis_with_a_redis_broker_and_the_database_without(settings):
    settings.AI_RATE_LIMIT_BACKEND = "auto"
    settings.IS_REDIS_BROKER = True
    assert ratelimit.backend() == "redis"
    settings.IS_REDIS_BROKER = False
    assert ratelimit.backend() == "database"


@pytest.mark.django_db
def test_a_full_window_defers_callers_to_later_windows_by_their_place_in_line(
    backend,
):
    name, now = key(), 1000.5  # window 100 of 10 s: it ends at 1010
    slots = [ratelimit.take(name, limit=3, period=10, now=now) for _ in range(3)]
    waits = []
    for _ in range(4):
        with pytest.raises(ratelimit.RateLimited) as caught:
            ratelimit.take(name, limit=3, period=10, now=now)
        waits.append(caught.value.retry_in)

    assert [slot.count for slot in slots] == [1, 2, 3]
    assert {slot.window for slot in slots} == {100}
    # the 4th-6th callers come back in the next window, the 7th in the one after;
    # jitter adds at most 2 s
    assert all(9.5 <= wait <= 11.5 for wait in waits[:3]), waits
    assert 19.5 <= waits[3] <= 21.5, waits
    assert "3 starts per 10 s" in str(caught.value)


@pytest.mark.django_db
def test_a_new_window_starts_counting_from_zero(backend):
    name = key()
    for _ in range(2):
        ratelimit.take(name, limit=2, period=10, now=1000.0)
    with pytest.raises(ratelimit.RateLimited):
        ratelimit.take(name, limit=2, period=10, now=1009.9)

    slot = ratelimit.take(name, limit=2, period=10, now=1010.0)

    assert (slot.window, slot.count) == (101, 1)


def test_concurrent_callers_never_take_more_than_the_limit(transactional_db, backend):
    name, limit = key(), 12

    def caller() -> int:
        allowed = 0
        for _ in range(5):
            try:
                ratelimit.take(name, limit=limit, period=3600)
                allowed += 1
            except ratelimit.RateLimited:
                pass
        return allowed

    # 40 attempts in one window (an hour long, so no boundary falls inside)
    assert sum(in_threads(caller, 8)) == limit


CONCURRENT_ON_SQLITE = """
import json, threading
from django.db import close_old_connections
from tasks_app import ratelimit
from claw.tests.conftest import in_threads
allowed, barrier = [], threading.Barrier(6)
def caller():
    try:
        barrier.wait(timeout=10)
        for _ in range(5):
            try:
                ratelimit.take("sqlite-test", limit=7, period=3600)
                allowed.append(1)
            except ratelimit.RateLimited:
                pass
    finally:
        close_old_connections()
threads = [threading.Thread(target=caller) for _ in range(6)]
[t.start() for t in threads]
[t.join(timeout=60) for t in threads]
print(json.dumps({"backend": ratelimit.backend(), "allowed": len(allowed)}))
"""


def test_the_database_counter_holds_on_sqlite_with_concurrent_connections(tmp_path):
    # The embedded stack: SQLite and the filesystem broker, so the database
    # counter; each thread has its own connection to the file.
    env = embedded_env(tmp_path)
    manage(env, "migrate", "--noinput")

    out = manage(env, "shell", "-c", CONCURRENT_ON_SQLITE)

    report = json.loads(out.strip().splitlines()[-1])
    assert report == {"backend": "database", "allowed": 7}


@pytest.mark.parametrize(
    "value,rate",
    [("10/60", (10, 60.0)), ("5/m", (5, 60.0)), ("2/1.5", (2, 1.5)), ("", None)],
)
def test_rates_are_starts_per_seconds_or_per_celery_unit(value, rate):
    from claw.settings import parse_rate

    assert parse_rate("X", value) == rate


@pytest.mark.parametrize("value", ["5", "5/week", "0/60", "a/60"])
def test_a_bad_rate_is_refused_naming_the_setting(value):
    from django.core.exceptions import ImproperlyConfigured

    from claw.settings import parse_rate

    with pytest.raises(ImproperlyConfigured, match="^X"):
        parse_rate("X", value)


@pytest.mark.django_db
def test_a_user_over_their_fair_share_is_deferred_while_another_user_starts(
    backend,
):
    name, now = key(), 1000.5  # window 100 of 10 s
    # user 1 alone: the whole window is theirs
    heavy = [
        ratelimit.take_fair(name, 1, limit=4, period=10, now=now) for _ in range(2)
    ]
    # user 2 arrives: the share is now 2 each, and user 1 has taken theirs
    light = ratelimit.take_fair(name, 2, limit=4, period=10, now=now)
    with pytest.raises(ratelimit.RateLimited):
        ratelimit.take_fair(name, 1, limit=4, period=10, now=now)
    also_light = ratelimit.take_fair(name, 2, limit=4, period=10, now=now)

    assert [s.count for s in heavy] == [1, 2]
    assert (light.count, also_light.count) == (3, 4)


@pytest.mark.django_db
def test_a_flooding_user_does_not_push_another_users_start_back(backend):
    name, now = key(), 1000.5
    for _ in range(4):  # user 1 takes the whole window...
        ratelimit.take_fair(name, 1, limit=4, period=10, now=now)
    heavy_waits = []
    for _ in range(20):  # ...and queues 20 more
        with pytest.raises(ratelimit.RateLimited) as caught:
            ratelimit.take_fair(name, 1, limit=4, period=10, now=now)
        heavy_waits.append(caught.value.retry_in)
    with pytest.raises(ratelimit.RateLimited) as caught:
        ratelimit.take_fair(name, 2, limit=4, period=10, now=now)
    light_wait = caught.value.retry_in

    # user 2 comes back in the next window, not behind user 1's 20
    assert 9.5 <= light_wait <= 11.5, light_wait
    assert max(heavy_waits) > 30, heavy_waits
    # next window: both users active, 2 starts each; user 2 gets in whatever
    # user 1 sends first
    later = 1010.5
    taken = []
    for _ in range(5):
        with contextlib.suppress(ratelimit.RateLimited):
            taken.append(ratelimit.take_fair(name, 1, limit=4, period=10, now=later))
    assert len(taken) == 2
    assert ratelimit.take_fair(name, 2, limit=4, period=10, now=later).count == 3
