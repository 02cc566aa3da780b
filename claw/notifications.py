"""Delivery of one notification over its channel.

``deliver`` raises ``TransientDeliveryError`` for failures worth retrying (SMTP and
connection errors, timeouts, webhook 5xx) and ``PermanentDeliveryError`` otherwise
(webhook 4xx, an unconfigured channel).
"""

from __future__ import annotations

import smtplib

import httpx
from django.conf import settings
from django.core.mail import send_mail

from claw.models import Notification
from tasks_app import httpclient


class DeliveryError(Exception):
    pass


class TransientDeliveryError(DeliveryError):
    pass


class PermanentDeliveryError(DeliveryError):
    pass


WEBHOOK_SETTINGS = {
    Notification.Channel.PUSH: "NOTIFY_PUSH_WEBHOOK_URL",
    Notification.Channel.SMS: "NOTIFY_SMS_WEBHOOK_URL",
}


def deliver(notification: Notification) -> None:
    channel = notification.channel
    if channel == Notification.Channel.SYSTEM:
        return  # in-app: stored and listed by the API; nothing to send
    if channel == Notification.Channel.EMAIL:
        _send_email(notification)
    elif channel in WEBHOOK_SETTINGS:
        _post_webhook(notification)
    else:
        raise PermanentDeliveryError(f"Unknown channel {channel!r}")


def _send_email(notification: Notification) -> None:
    address = notification.recipient.email
    if not address:
        raise PermanentDeliveryError(
            f"User {notification.recipient} has no email address"
        )
    try:
        send_mail(
            notification.subject,
            notification.body,
            settings.DEFAULT_FROM_EMAIL,
            [address],
            fail_silently=False,
        )
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
        raise PermanentDeliveryError(f"Email refused: {exc}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise TransientDeliveryError(f"Email not sent: {exc}") from exc


def _post_webhook(notification: Notification) -> None:
    setting = WEBHOOK_SETTINGS[notification.channel]
    url = getattr(settings, setting, "")
    if not url:
        raise PermanentDeliveryError(
            f"The {notification.channel} channel is not configured: set {setting}"
        )
    payload = {
        "id": notification.pk,
        "channel": notification.channel,
        "recipient": {
            "id": notification.recipient_id,
            "username": notification.recipient.get_username(),
            "email": notification.recipient.email,
        },
        "subject": notification.subject,
        "body": notification.body,
    }
    # Delivery is at least once: a worker killed after the POST but before the
    # notification is marked sent, or a timeout the receiver did not see, sends
    # it again. The key is the same on every try, so a receiver can drop repeats.
    headers = {"Idempotency-Key": f"notification-{notification.pk}"}
    try:
        resp = httpx.post(
            url, json=payload, headers=headers, timeout=settings.NOTIFY_WEBHOOK_TIMEOUT
        )
    except httpx.TransportError as exc:
        raise httpclient.transport_error(
            exc, f"{notification.channel} webhook", transient=TransientDeliveryError
        ) from exc
    if resp.status_code >= 500:
        raise TransientDeliveryError(
            f"{notification.channel} webhook answered {resp.status_code}: {resp.text[:300]}"
        )
    if resp.status_code >= 400:
        raise PermanentDeliveryError(
            f"{notification.channel} webhook answered {resp.status_code}: {resp.text[:300]}"
        )
