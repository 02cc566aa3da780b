"""Aggregates for the admin dashboard, the stats API and /metrics.

They read tasks_app.rollups' per-minute, per-hour and all-time rows, never the
records: a chart of 7 days is 168 slots summed by the database whatever the
ledger's size, and no transition pays for them (the rows are folded off the hot
path). What the rollups cannot know, the records still answer through an index:
the oldest waiting record of each queue. summary() may be kept in the cache for
CLAW_STATS_CACHE_SECONDS; with the rollups it is cheap without it too.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Max, Min, Q, Sum
from django.utils import timezone

from tasks_app import rollups, text
from tasks_app.models import TaskRecord, TaskRollup

FAILED = Q(state=TaskRecord.State.FAILURE)
Outcome = TaskRollup.Outcome
State = TaskRecord.State

# The state a record enters with each outcome: the one set of names the
# dashboard, the stats API and the task list share.
OUTCOME_STATES = {
    Outcome.SENT: State.PENDING,
    Outcome.STARTED: State.STARTED,
    Outcome.RETRIED: State.RETRY,
    Outcome.SUCCEEDED: State.SUCCESS,
    Outcome.FAILED: State.FAILURE,
    Outcome.REVOKED: State.REVOKED,
    Outcome.LOST: State.LOST,
}
FINISHED = (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.REVOKED, Outcome.LOST)
# Runs that ended with a result, whose times make a task type's run time.
RAN = (Outcome.SUCCEEDED, Outcome.FAILED)


def since(hours: int) -> datetime:
    return timezone.now() - timedelta(hours=hours)


def _span_for(hours: int) -> int:
    return rollups.MINUTE if hours <= 2 else rollups.HOUR


def _window(hours: int):
    span = _span_for(hours)
    return TaskRollup.objects.filter(
        span=span, start__gte=rollups.slot(since(hours), span)
    )


def outcome_counts(hours: int) -> dict[str, int]:
    """How often each outcome happened in the window (whole slots)."""
    rows = _window(hours).values_list("outcome").annotate(n=Sum("count")).order_by()
    return {outcome: n for outcome, n in rows}


def states_entered(counts: dict[str, int]) -> dict[str, int]:
    """outcome_counts() under state names: how many times each state was entered."""
    return {
        OUTCOME_STATES[outcome].value: n for outcome, n in counts.items() if n
    }  # fmt: skip


def per_slot(hours: int, span: int | None = None) -> list[dict]:
    """Finished and failed per slot (minute or hour), every slot present, oldest
    first: what the charts draw."""
    span = span or _span_for(hours)
    first = rollups.slot(since(hours), span) + timedelta(seconds=span)
    rows = (
        TaskRollup.objects.filter(span=span, start__gte=first, outcome__in=FINISHED)
        .values("start")
        .annotate(
            finished=Sum("count"),
            failed=Sum("count", filter=Q(outcome__in=(Outcome.FAILED, Outcome.LOST))),
        )
        .order_by()
    )
    found = {row["start"]: row for row in rows}
    count = int(hours * 3600 // span)
    return [
        {
            "start": at,
            "finished": (found.get(at) or {}).get("finished") or 0,
            "failed": (found.get(at) or {}).get("failed") or 0,
        }
        for at in (first + timedelta(seconds=span * i) for i in range(count))
    ]


def by_name(hours: int) -> dict[str, dict]:
    """Per task type: runs, failures, failure rate, p50/p95 run time and p95 wait."""
    counts: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    run_buckets: dict[str, list] = defaultdict(list)
    wait_buckets: dict[str, list] = defaultdict(list)
    for name, outcome, n, buckets in _window(hours).values_list(
        "name", "outcome", "count", "buckets"
    ):
        counts[name][outcome] += n
        if outcome in RAN:
            run_buckets[name].append(buckets)
        elif outcome == Outcome.STARTED:
            wait_buckets[name].append(buckets)
    result = {}
    for name, c in counts.items():
        finished = sum(c[o] for o in FINISHED)
        failed = c[Outcome.FAILED] + c[Outcome.LOST]
        run = rollups.merged(run_buckets[name])
        result[name] = {
            "total": finished,
            "failed": failed,
            "succeeded": c[Outcome.SUCCEEDED],
            "retried": c[Outcome.RETRIED],
            "revoked": c[Outcome.REVOKED],
            # None, not 0, for a type with no run that ended with a result
            "failure_rate": ratio(failed, c[Outcome.SUCCEEDED] + failed)
            if c[Outcome.SUCCEEDED] + failed
            else None,
            "runs": sum(run),
            "run_p50": rollups.quantile(0.5, run),
            "run_p95": rollups.quantile(0.95, run),
            "wait_p95": rollups.quantile(0.95, rollups.merged(wait_buckets[name])),
        }
    return result


def by_queue(hours: int) -> dict[str, dict[str, int]]:
    """Per queue: messages sent and runs finished in the window."""
    rows = (
        _window(hours)
        .values("queue")
        .annotate(
            sent=Sum("count", filter=Q(outcome=Outcome.SENT)),
            finished=Sum("count", filter=Q(outcome__in=FINISHED)),
        )
        .order_by()
    )
    return {
        r["queue"]: {"sent": r["sent"] or 0, "finished": r["finished"] or 0}
        for r in rows
    }


def oldest_waiting(queues) -> dict[str, datetime | None]:
    """The creation time of each queue's oldest record still waiting to start.

    One index probe per queue: the oldest PENDING record of the queue whose ETA
    (if any) has passed. A record waiting for a countdown is not late yet.
    """
    now = timezone.now()
    found = {}
    for queue in queues:
        found[queue] = (
            TaskRecord.objects.filter(state=State.PENDING, queue=queue)
            .filter(Q(eta__isnull=True) | Q(eta__lte=now))
            .order_by("id")
            .values_list("created_at", flat=True)
            .first()
        )
    return found


def cached(key: str, compute):
    """compute(), kept in the cache for CLAW_STATS_CACHE_SECONDS (0: not kept)."""
    ttl = settings.CLAW_STATS_CACHE_SECONDS
    if ttl <= 0:
        return compute()
    value = cache.get(key)
    if value is None:
        value = compute()
        cache.set(key, value, ttl)
    return value


def summary(hours: int) -> dict:
    """By state entered, by task type, by queue and per slot over the last
    `hours`, from the rollups (see the module docstring); maybe cached."""
    return cached(f"claw:stats:{hours}", lambda: _summary(hours))


def _summary(hours: int) -> dict:
    counts = outcome_counts(hours)
    return {
        "start": since(hours),
        "by_state": states_entered(counts),
        "by_name": by_name(hours),
        "by_queue": by_queue(hours),
        "hourly": [
            {"hour": row["start"], "finished": row["finished"], "failed": row["failed"]}
            for row in per_slot(hours, rollups.HOUR)
            if row["finished"]
        ],
    }


def ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def failure_rate(by_state: dict[str, int]) -> float:
    """Failed (or lost) among the runs that ended with a result."""
    failed = by_state.get(State.FAILURE, 0) + by_state.get(State.LOST, 0)
    return ratio(failed, by_state.get(State.SUCCESS, 0) + failed)


NUMBERS = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|0x[0-9a-f]+|\d+",
    re.IGNORECASE,
)


def normalise_error(error: str) -> str:
    """Exception type and message with ids and numbers stripped, for grouping."""
    return text.first_line(NUMBERS.sub("#", error or ""), 200)


def failure_groups(start: datetime, limit: int = 50) -> list[dict]:
    """Failures grouped by task name and normalised error, most frequent first.

    Normalising happens in Python over (name, error) pairs already grouped by the
    database, so it reads one row per distinct error, not one per failure.
    """
    rows = (
        TaskRecord.objects.filter(FAILED, finished_at__gte=start)
        .values("name", "error")
        .annotate(
            n=Count("id"),
            first=Min("finished_at"),
            last=Max("finished_at"),
            sample=Max("id"),
        )
        .order_by()[:5000]
    )
    groups: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["name"], normalise_error(row["error"]))
        group = groups.setdefault(
            key,
            {
                "name": key[0],
                "error": key[1],
                "count": 0,
                "first": row["first"],
                "last": row["last"],
                "sample": row["sample"],
                "errors": [],
            },
        )
        group["count"] += row["n"]
        group["first"] = min(group["first"], row["first"])
        group["last"] = max(group["last"], row["last"])
        group["errors"].append(row["error"])
    return sorted(groups.values(), key=lambda g: -g["count"])[:limit]
