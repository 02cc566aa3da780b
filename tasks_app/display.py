"""How the admin writes durations, rates and times: one way on every page."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from tasks_app.models import TaskState


def duration(value: float | timedelta | None) -> str:
    """9 ms, 2.1 s, 3 min 4 s, 2 h 5 min; "" for None.

    Under a second in whole milliseconds (a 1 s update is "1.0 s", never
    "0.0s"), under a minute in tenths of a second, then whole units.
    """
    if value is None:
        return ""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds < 1:
        ms = round(seconds * 1000)
        return "1.0 s" if ms >= 1000 else f"{ms} ms"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    if whole < 86400:
        hours, rest = divmod(whole, 3600)
        minutes = rest // 60
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, rest = divmod(whole, 86400)
    hours = rest // 3600
    return f"{days} d {hours} h" if hours else f"{days} d"


def percent(ratio: float | None) -> str:
    """0.1234 -> "12.3%"; whole numbers without a decimal; "" for None."""
    if ratio is None:
        return ""
    value = ratio * 100
    if value == round(value):
        return f"{round(value)}%"
    return f"{value:.1f}%"


def local(value: datetime | None, *, ms: bool = False) -> str:
    """An aware time in the admin's one time zone (TIME_ZONE, named on every admin
    page): "2026-12-03 15:49:03" (with ms: ".123"); "" for None."""
    if value is None:
        return ""
    text = timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-3] if ms else text[:-7]


def state_label(state: str) -> str:
    """A state's one display name (Succeeded, Cancelled, ...) for Celery's and the
    ledger's state names alike; unknown names as they are."""
    try:
        return TaskState(state).label
    except ValueError:
        return state
