"""Staff alerts from the health check: logged, sent as a system notification, and
de-duplicated through StaffAlert rows."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from tasks_app.models import StaffAlert

logger = logging.getLogger("tasks_app.alerts")


def _notify(subject: str, body: str, key: str) -> bool:
    """Send through claw.notifications.notify_staff; log only if it is missing.

    Imported lazily: the notification app must not be a hard dependency of the
    task platform, and a broken notifier must not break the health check.
    """
    try:
        from claw.notifications import notify_staff
    except ImportError:
        logger.warning("claw.notifications.notify_staff unavailable; alert logged only")
        return False
    try:
        notify_staff(subject, body, dedupe_key=key)
    except Exception:
        logger.exception("Could not send staff alert %s", key)
        return False
    return True


def raise_alert(key: str, subject: str, body: str = "") -> bool:
    """Raise (or keep raising) an alert; return whether it was sent now.

    The conditional UPDATE claims the send, so two health checks running at once
    send it once.
    """
    now = timezone.now()
    repeat_before = now - timedelta(minutes=settings.CLAW_ALERT_REPEAT_MINUTES)
    StaffAlert.objects.get_or_create(
        key=key, defaults={"subject": subject, "body": body, "active": False}
    )
    with transaction.atomic():
        claimed = (
            StaffAlert.objects.filter(key=key)
            .exclude(active=True, last_sent_at__gte=repeat_before)
            .update(
                active=True,
                subject=subject,
                body=body,
                last_sent_at=now,
                resolved_at=None,
            )
        )
    if not claimed:
        return False
    StaffAlert.objects.filter(key=key).update(times_sent=F("times_sent") + 1)
    logger.error("STAFF ALERT %s: %s\n%s", key, subject, body)
    _notify(subject, body, key)
    return True


def resolve_others(keys_still_active: Iterable[str]) -> int:
    """Mark every active alert not raised in this check as resolved."""
    return (
        StaffAlert.objects.filter(active=True)
        .exclude(key__in=list(keys_still_active))
        .update(active=False, resolved_at=timezone.now())
    )
