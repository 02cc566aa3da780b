"""Aggregate queries over the ledger for the admin dashboard and the stats API.

Each is one GROUP BY inside a time window, so the cost follows the window, not the
table. A busy day still puts a million rows in a 24-hour window, and counting them
takes the database most of a second however it is indexed, so summary() runs two
such queries for everything both pages show and keeps the answer in the cache for
CLAW_STATS_CACHE_SECONDS: page views cost a cache read, and the ledger's per-task
writes pay nothing for the dashboard (no rollup tables to keep up to date).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import (
    Avg,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Max,
    Min,
    Q,
    Sum,
)
from django.db.models.functions import TruncHour
from django.utils import timezone

from tasks_app import text
from tasks_app.models import TaskRecord

FAILED = Q(state=TaskRecord.State.FAILURE)


def since(hours: int) -> datetime:
    return timezone.now() - timedelta(hours=hours)


def counts_by_state(start: datetime) -> dict[str, int]:
    rows = TaskRecord.objects.filter(created_at__gte=start).values_list("state")
    return dict(rows.annotate(n=Count("id")).order_by())


def counts_by_name(start: datetime) -> dict[str, dict[str, int]]:
    rows = (
        TaskRecord.objects.filter(created_at__gte=start)
        .values("name")
        .annotate(total=Count("id"), failed=Count("id", filter=FAILED))
        .order_by()
    )
    return {r["name"]: {"total": r["total"], "failed": r["failed"]} for r in rows}


def hourly(start: datetime) -> list[dict]:
    """Finished and failed records per hour."""
    return list(
        TaskRecord.objects.filter(finished_at__gte=start)
        .annotate(hour=TruncHour("finished_at"))
        .values("hour")
        .annotate(finished=Count("id"), failed=Count("id", filter=FAILED))
        .order_by("hour")
    )


def hourly_filled(
    start: datetime, hours: int = 24, rows: list[dict] | None = None
) -> list[dict]:
    """hourly() (or the given rows), with a zero row for every empty hour."""
    found = {row["hour"]: row for row in (hourly(start) if rows is None else rows)}
    first = start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    slots = [first + timedelta(hours=i) for i in range(hours)]
    return [
        {
            "hour": hour,
            **{k: found.get(hour, {}).get(k, 0) for k in ("finished", "failed")},
        }
        for hour in slots
    ]


def slowest(start: datetime, limit: int = 5) -> list[dict]:
    duration = ExpressionWrapper(
        F("finished_at") - F("started_at"), output_field=DurationField()
    )
    return list(
        TaskRecord.objects.filter(finished_at__gte=start, started_at__isnull=False)
        .values("name")
        .annotate(avg=Avg(duration), worst=Max(duration), runs=Count("id"))
        .order_by("-avg")[:limit]
    )


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


def summary(hours: int, *, slowest: bool = False) -> dict:
    """By state, by name and per hour (and, if asked, the slowest task types) for
    the last `hours`.

    Two queries (records created in the window, records finished in it) instead
    of one per table on the page; cached, see the module docstring. The durations
    for `slowest` make the second query dearer, so only the dashboard asks.
    """
    key = f"claw:stats:{hours}:{int(slowest)}"
    return cached(key, lambda: _summary(since(hours), slowest))


def _summary(start: datetime, with_slowest: bool) -> dict:
    by_state, by_name = window_counts(start)
    result = {"start": start, "by_state": by_state, "by_name": by_name}
    if not with_slowest:
        return {**result, "hourly": hourly(start)}
    per_hour, per_name = _finished(start)
    return {
        **result,
        "hourly": [{"hour": h, **per_hour[h]} for h in sorted(per_hour)],
        "slowest": sorted(
            (
                {"name": name, "avg": r["total"] / r["runs"], "worst": r["worst"],
                 "runs": r["runs"]}
                for name, r in per_name.items()
                if r["runs"]
            ),
            key=lambda r: -r["avg"],
        )[:5],
    }  # fmt: skip


def window_counts(start: datetime) -> tuple[dict[str, int], dict[str, dict]]:
    """counts_by_state() and counts_by_name() from one GROUP BY state, name."""
    rows = (
        TaskRecord.objects.filter(created_at__gte=start)
        .values_list("state", "name")
        .annotate(n=Count("id"))
        .order_by()
    )
    by_state: dict[str, int] = {}
    by_name: dict[str, dict[str, int]] = {}
    for state, name, n in rows:
        by_state[state] = by_state.get(state, 0) + n
        counts = by_name.setdefault(name, {"total": 0, "failed": 0})
        counts["total"] += n
        if state == TaskRecord.State.FAILURE:
            counts["failed"] += n
    return by_state, by_name


def _finished(start: datetime) -> tuple[dict, dict]:
    """hourly() per hour and slowest()'s sums per name, from one GROUP BY."""
    duration = ExpressionWrapper(
        F("finished_at") - F("started_at"), output_field=DurationField()
    )
    rows = (
        TaskRecord.objects.filter(finished_at__gte=start)
        .annotate(hour=TruncHour("finished_at"))
        .values("hour", "name")
        .annotate(
            finished=Count("id"),
            failed=Count("id", filter=FAILED),
            runs=Count("started_at"),
            total=Sum(duration),
            worst=Max(duration),
        )
        .order_by()
    )
    per_hour: dict[datetime, dict[str, int]] = {}
    per_name: dict[str, dict] = {}
    for row in rows:
        hour = per_hour.setdefault(row["hour"], {"finished": 0, "failed": 0})
        hour["finished"] += row["finished"]
        hour["failed"] += row["failed"]
        if not row["runs"]:
            continue
        name = per_name.setdefault(
            row["name"], {"runs": 0, "total": timedelta(0), "worst": row["worst"]}
        )
        name["runs"] += row["runs"]
        name["total"] += row["total"]
        name["worst"] = max(name["worst"], row["worst"])
    return per_hour, per_name


def failure_rate(by_state: dict[str, int]) -> float:
    finished = by_state.get("SUCCESS", 0) + by_state.get("FAILURE", 0)
    return by_state.get("FAILURE", 0) / finished if finished else 0.0


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
