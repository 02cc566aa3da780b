"""GET /health: database, broker, live workers and beat, each checked for real.

Anyone may ask whether the stack is ok (load balancers and probes do, without a
login); only staff and API token holders see which part failed and the live
workers. The checks cost a worker broadcast and a broker connection, so their
results are kept for CLAW_HEALTH_CACHE_SECONDS in the shared cache: a flood of
requests costs one round of checks per interval (at most one per process at a
time when the cache is cold), not one per request.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.settings import api_settings

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


logger = logging.getLogger(__name__)
CACHE_KEY = "claw:health"
# One round of checks at a time in a process; the requests that arrive meanwhile
# wait for its answer instead of each pinging the workers.
_checking = threading.Lock()


def run_checks() -> dict[str, dict]:
    results = {}
    for name, check in CHECKS.items():
        try:
            results[name] = check()
        except Exception as exc:
            # The message may hold a host, a user or a path: it goes to the log,
            # the page shows only the exception's type.
            logger.warning("health check %s failed", name, exc_info=True)
            results[name] = {"ok": False, "error": type(exc).__name__}
    return results


def _cache_get():
    try:
        return cache.get(CACHE_KEY)
    except Exception:  # a shared cache that is down must not make /health a 500
        logger.warning("health: cache unavailable", exc_info=True)
        return None


def cached_checks() -> dict[str, dict]:
    """run_checks(), reused for CLAW_HEALTH_CACHE_SECONDS (0: every request)."""
    ttl = settings.CLAW_HEALTH_CACHE_SECONDS
    if ttl <= 0:
        return run_checks()
    results = _cache_get()
    if results is not None:
        return results
    with _checking:
        results = _cache_get()
        if results is None:
            results = run_checks()
            try:
                cache.set(CACHE_KEY, results, ttl)
            except Exception:
                logger.warning("health: cache unavailable", exc_info=True)
    return results


def sees_details(request) -> bool:
    """Staff (admin session or token) and any API token holder; not anonymous
    callers, nor a user's browser session."""
    if request.user.is_authenticated and request.user.is_staff:
        return True
    authenticators = [auth() for auth in api_settings.DEFAULT_AUTHENTICATION_CLASSES]
    drf_request = Request(request, authenticators=authenticators)
    try:
        user, auth = drf_request.user, drf_request.auth
    except APIException:  # a wrong or expired token: an anonymous caller
        return False
    return user.is_authenticated and (user.is_staff or auth is not None)


@require_GET
def health(request):
    results = cached_checks()
    failing = sorted(name for name, result in results.items() if not result["ok"])
    body = {"status": "ok" if not failing else "unhealthy"}
    if sees_details(request):
        body.update(failing=failing, **results)
    return JsonResponse(body, status=200 if not failing else 503)
