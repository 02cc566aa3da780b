"""The only writers of claw's models."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from claw import llm

# What other domains (writing) use of the AI providers: they import this module
# only (tests/test_architecture.py), so these names are its public face.
from claw.llm import Completion as Completion
from claw.llm import ExtractiveProvider as ExtractiveProvider
from claw.llm import LLMRejected as LLMRejected
from claw.llm import LLMUnavailable as LLMUnavailable
from claw.llm import Passage as Passage
from claw.models import Notification
from claw.notifications import PermanentDeliveryError, TransientDeliveryError, deliver
from tasks_app import ownership
from tasks_app import services as ledger


def notify(user, channel: str, subject: str, body: str = "") -> Notification:
    """Store a notification and send it from a worker (after commit)."""
    if channel not in Notification.Channel.values:
        raise ValueError(
            f"channel: must be one of {', '.join(Notification.Channel.values)}"
        )
    with transaction.atomic():
        notification = Notification.objects.create(
            recipient=user, channel=channel, subject=subject[:200], body=body
        )
        ledger.submit(
            "claw.send_notification",
            args=[notification.pk],
            owner=user,
            target=notification,
        )
    return notification


def resend(notification: Notification) -> Notification:
    """Send a notification again (admin action)."""
    with transaction.atomic():
        Notification.objects.filter(pk=notification.pk).update(
            status=Notification.Status.PENDING, error="", sent_at=None
        )
        ledger.submit(
            "claw.send_notification",
            args=[notification.pk],
            owner=notification.recipient,
            target=notification,
        )
    notification.refresh_from_db()
    return notification


def send(notification_id: int, *, final_attempt: bool) -> str:
    """Deliver one notification; called by the task. Returns the final status.

    Transient errors propagate (the task retries) unless this was the final attempt,
    in which case the notification is marked failed with the error. Only the
    recipient's task may send it (ownership.NotOwned otherwise).
    """
    recipient = Notification.objects.filter(pk=notification_id).values_list(
        "recipient_id", flat=True
    )
    ownership.ensure_owned(*recipient, what=f"notification {notification_id}")
    Notification.objects.filter(pk=notification_id).update(attempts=F("attempts") + 1)
    notification = Notification.objects.select_related("recipient").get(
        pk=notification_id
    )
    if notification.status == Notification.Status.SENT:
        return notification.status  # a redelivery after the send: nothing twice
    try:
        deliver(notification)
    except PermanentDeliveryError as exc:
        _mark(notification_id, Notification.Status.FAILED, str(exc))
        raise
    except TransientDeliveryError as exc:
        status = (
            Notification.Status.FAILED if final_attempt else Notification.Status.PENDING
        )
        _mark(notification_id, status, str(exc))
        raise
    _mark(notification_id, Notification.Status.SENT, "", sent_at=timezone.now())
    return Notification.Status.SENT


def _mark(pk: int, status: str, error: str, sent_at=None) -> None:
    Notification.objects.filter(pk=pk).update(
        status=status, error=error, sent_at=sent_at
    )


def mark_read(notification: Notification) -> Notification:
    if notification.read_at is None:
        notification.read_at = timezone.now()
        Notification.objects.filter(pk=notification.pk, read_at=None).update(
            read_at=notification.read_at
        )
    return notification


def get_provider():
    """The configured AI provider (claw.llm.get_provider, looked up at each call)."""
    return llm.get_provider()


def send_staff_alert(subject: str, body: str, *, dedupe_key: str = "") -> list:
    """The notifier of the platform's staff alerts (tasks_app.alerts, which
    de-duplicates them; registered in ClawConfig.ready): a system notification
    to every active staff user, and e-mail to STAFF_ALERT_EMAILS."""
    sent = []
    for user in get_user_model().objects.filter(is_staff=True, is_active=True):
        sent.append(notify(user, Notification.Channel.SYSTEM, subject, body))
    emails = list(settings.STAFF_ALERT_EMAILS)
    if emails:
        from django.core.mail import send_mail

        transaction.on_commit(
            lambda: send_mail(
                subject, body, settings.DEFAULT_FROM_EMAIL, emails, fail_silently=True
            )
        )
    return sent
