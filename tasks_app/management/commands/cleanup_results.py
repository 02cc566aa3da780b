from __future__ import annotations

import argparse

from django.core.management.base import BaseCommand

from tasks_app import maintenance


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1, got {value!r}"
        )
    return number


class Command(BaseCommand):
    help = (
        "Delete django-celery-results rows older than CELERY_RESULT_EXPIRES_DAYS, and "
        "finished task records with their events past their retention: "
        "CLAW_RETENTION_SUCCESS_DAYS, CLAW_RETENTION_REVOKED_DAYS, "
        "CLAW_RETENTION_FAILURE_DAYS (FAILURE and LOST), per task and state "
        "CLAW_RETENTION_OVERRIDES; in batches."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted."
        )
        parser.add_argument(
            "--batch",
            type=positive_int,
            default=maintenance.BATCH,
            help=f"Rows per batch (from 1; default {maintenance.BATCH}).",
        )

    def handle(self, *args, dry_run=False, batch=maintenance.BATCH, **options):
        report = maintenance.cleanup_expired(dry_run=dry_run, batch=batch)
        verb = "Would delete" if dry_run else "Deleted"
        self.stdout.write(
            f"{verb} {report['results']} results, {report['records']} task records "
            f"and {report['events']} events."
        )
