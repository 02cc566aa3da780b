"""Beat's scheduler: django-celery-beat's DatabaseScheduler behind a leader lease."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_celery_beat.schedulers import DatabaseScheduler

from tasks_app import retries
from tasks_app.models import BeatLease

logger = logging.getLogger(__name__)

LEASE_SECONDS = 30
STANDBY_SLEEP = 5.0


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire_lease(holder: str, *, seconds: int = LEASE_SECONDS) -> bool:
    """Take or renew the one beat lease; False while another live beat holds it.

    A conditional UPDATE is the lock, so it works on SQLite and PostgreSQL alike;
    a beat that dies stops renewing and the lease expires after `seconds`.
    """
    now = timezone.now()
    BeatLease.objects.get_or_create(pk=1)
    with transaction.atomic():
        return bool(
            BeatLease.objects.filter(pk=1)
            .filter(
                Q(holder=holder) | Q(expires_at__isnull=True) | Q(expires_at__lt=now)
            )
            .update(
                holder=holder,
                expires_at=now + timedelta(seconds=seconds),
                last_tick_at=now,
            )
        )


def release_lease(holder: str) -> None:
    BeatLease.objects.filter(pk=1, holder=holder).update(holder="", expires_at=None)


class LeaderScheduler(DatabaseScheduler):
    """Only the beat holding the lease sends; a second beat waits as a standby.

    Two beats would send every periodic task twice (DESIGN.md, traps).
    """

    def __init__(self, *args, **kwargs):
        self.holder = holder_name()
        self.database_failures = 0  # in a row, for the backoff
        super().__init__(*args, **kwargs)

    def install_default_entries(self, data):
        # Celery would add its own celery.backend_cleanup; our
        # tasks_app.cleanup_expired_results (default schedules) does that job.
        return data

    def tick(self, *args, **kwargs):
        try:
            if not acquire_lease(self.holder):
                wait = STANDBY_SLEEP
            else:
                wait = min(super().tick(*args, **kwargs), LEASE_SECONDS / 3)
        except retries.DATABASE_ERRORS as error:
            # A database restart or outage: Celery's beat would exit on the
            # error. Keep running, reconnect and try again; a lease that lapsed
            # meanwhile may be another beat's by then (then this one waits).
            wait = retries.backoff(
                self.database_failures, base=1, maximum=LEASE_SECONDS / 3
            )
            self.database_failures += 1
            logger.warning(
                "Database unavailable (%r); beat tries again in %.1f s", error, wait
            )
            retries.close_connections()
            return wait
        self.database_failures = 0
        return wait

    def close(self):
        try:
            super().close()
        finally:
            release_lease(self.holder)
