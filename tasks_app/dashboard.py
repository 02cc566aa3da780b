"""Aggregate queries over the ledger for the admin dashboard and the stats API.

Each is one GROUP BY over an indexed column inside a time window, so the cost
follows the window, not the table.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django.db.models import (
    Avg,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Max,
    Min,
    Q,
)
from django.db.models.functions import TruncHour
from django.utils import timezone

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


def hourly_filled(start: datetime, hours: int = 24) -> list[dict]:
    """hourly(), with a zero row for every hour nothing finished in."""
    found = {row["hour"]: row for row in hourly(start)}
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


def failure_rate(by_state: dict[str, int]) -> float:
    finished = by_state.get("SUCCESS", 0) + by_state.get("FAILURE", 0)
    return by_state.get("FAILURE", 0) / finished if finished else 0.0


NUMBERS = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|0x[0-9a-f]+|\d+",
    re.IGNORECASE,
)


def normalise_error(error: str) -> str:
    """Exception type and message with ids and numbers stripped, for grouping."""
    first_line = (error or "").strip().splitlines()[0] if error else ""
    return NUMBERS.sub("#", first_line)[:200]


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
