"""Thin task wrappers around claw.services."""

from __future__ import annotations

from claw import services
from claw.celery import app
from claw.notifications import TransientDeliveryError


@app.task(
    name="claw.send_notification",
    bind=True,
    autoretry_for=(TransientDeliveryError,),
    max_retries=3,
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
)
def send_notification(self, notification_id: int) -> str:
    final = self.request.retries >= self.max_retries
    return services.send(notification_id, final_attempt=final)
