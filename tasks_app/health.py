"""GET /health: database, broker, live workers and beat, each checked for real."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from claw.celery import app
from tasks_app import workers
from tasks_app.models import BeatLease


def check_database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"ok": True}


def check_broker() -> dict:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return {"ok": True}


def check_workers() -> dict:
    names = workers.ping(workers.QUICK_TIMEOUT)
    return {"ok": bool(names), "live": names}


def check_beat() -> dict:
    lease = BeatLease.objects.filter(pk=1).first()
    last = lease.last_tick_at if lease else None
    stale = timezone.now() - timedelta(seconds=settings.CLAW_BEAT_STALE_AFTER)
    return {"ok": bool(last and last > stale), "last_tick": last and last.isoformat()}


CHECKS = {
    "database": check_database,
    "broker": check_broker,
    "workers": check_workers,
    "beat": check_beat,
}


def run_checks() -> dict[str, dict]:
    results = {}
    for name, check in CHECKS.items():
        try:
            results[name] = check()
        except Exception as exc:
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return results


@require_GET
def health(request):
    results = run_checks()
    failing = sorted(name for name, result in results.items() if not result["ok"])
    body = {
        "status": "ok" if not failing else "unhealthy",
        "failing": failing,
        **results,
    }
    return JsonResponse(body, status=200 if not failing else 503)
