"""Staff alerts: the platform's one de-duplication of them, and the hook through
which a domain delivers them.

- notify_staff(subject, body, dedupe_key=...): send once per key per
  STAFF_ALERT_WINDOW (claim(): a cache.add, then an AlertClaim row), such as the
  alert of a task that failed for good.
- raise_alert(key, subject, body): the health check's alerts, which stay active
  until a check no longer raises them (StaffAlert rows, for the admin): sent when
  raised, then again every CLAW_ALERT_REPEAT_MINUTES while active. The same
  claim() decides, with that window; resolving an alert drops its claim.

Either is logged and handed to the notifiers a domain registered
(register_notifier; the conversations domain sends a system notification to
every staff user, and e-mail). The platform imports no domain.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import F
from django.utils import timezone

from tasks_app.models import AlertClaim, StaffAlert

logger = logging.getLogger("tasks_app.alerts")


Notifier = Callable[..., object]  # notify(subject, body, *, dedupe_key)
_notifiers: list[Notifier] = []


def register_notifier(notify: Notifier) -> None:
    """Deliver staff alerts through notify(subject, body, dedupe_key=...) too
    (a domain's AppConfig.ready)."""
    if notify not in _notifiers:
        _notifiers.append(notify)


def _notify(subject: str, body: str, key: str) -> bool:
    """Hand an alert to every notifier; log only if none is registered. A broken
    notifier must not break the health check or the worker."""
    if not _notifiers:
        logger.warning(
            "No notify_staff registered (notify_staff unavailable; alert logged only)"
        )
        return False
    sent = True
    for notify in _notifiers:
        try:
            notify(subject, body, dedupe_key=key)
        except Exception:
            logger.exception("Could not send staff alert %s", key)
            sent = False
    return sent


def claim(key: str, window: float) -> bool:
    """Claim the right to send alert key now: the first claim of a window wins.

    An AlertClaim row is the guard that holds across processes whose caches are
    separate (locmem on the embedded stack, several workers): its unique key
    settles the first-ever race (the loser's get_or_create finds the winner's
    row), and a conditional UPDATE the later ones.
    """
    digest = _digest(key)
    now = timezone.now()
    _, created = AlertClaim.objects.get_or_create(key=digest, defaults={"sent_at": now})
    if created:
        return True
    since = now - timedelta(seconds=window)
    return bool(
        AlertClaim.objects.filter(key=digest, sent_at__lt=since).update(sent_at=now)
    )


def notify_staff(subject: str, body: str, *, dedupe_key: str) -> bool:
    """Alert staff once per dedupe_key per STAFF_ALERT_WINDOW; whether it was sent.

    ``cache.add`` turns away the rest of a burst cheaply, within one process (or
    every process, with a shared CACHE_URL); claim() is the real guard.
    """
    window = settings.STAFF_ALERT_WINDOW
    if not cache.add("claw:staff-alert:" + _digest(dedupe_key), 1, timeout=window):
        return False
    if not claim(dedupe_key, window):
        return False
    logger.error("STAFF ALERT %s: %s\n%s", dedupe_key, subject, body)
    return _notify(subject, body, dedupe_key)


def raise_alert(key: str, subject: str, body: str = "") -> bool:
    """Raise (or keep raising) a health-check alert; return whether it was sent now.

    The same claim() as notify_staff decides, with the repeat window: sent when
    raised, again every CLAW_ALERT_REPEAT_MINUTES while it stays active, and at
    once when raised again after it was resolved (resolve_others drops the claim).
    """
    StaffAlert.objects.get_or_create(
        key=key, defaults={"subject": subject, "body": body, "active": False}
    )
    StaffAlert.objects.filter(key=key).update(
        active=True, subject=subject, body=body, resolved_at=None
    )
    if not claim(_health_key(key), settings.CLAW_ALERT_REPEAT_MINUTES * 60):
        return False
    StaffAlert.objects.filter(key=key).update(
        last_sent_at=timezone.now(), times_sent=F("times_sent") + 1
    )
    logger.error("STAFF ALERT %s: %s\n%s", key, subject, body)
    _notify(subject, body, key)
    return True


def resolve_others(keys_still_active: Iterable[str]) -> int:
    """Mark every active alert not raised in this check as resolved."""
    resolved = StaffAlert.objects.filter(active=True).exclude(
        key__in=list(keys_still_active)
    )
    keys = list(resolved.values_list("key", flat=True))
    AlertClaim.objects.filter(key__in=[_digest(_health_key(k)) for k in keys]).delete()
    return StaffAlert.objects.filter(key__in=keys, active=True).update(
        active=False, resolved_at=timezone.now()
    )


def _health_key(key: str) -> str:
    # apart from notify_staff's keys, which come from task names and ids
    return "health:" + key


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
