from __future__ import annotations

from django.core.management.base import BaseCommand

from tasks_app import maintenance


class Command(BaseCommand):
    help = (
        "Delete expired results, and task records and events past their retention "
        "(CLAW_RECORD_RETENTION_DAYS, CLAW_RETENTION_OVERRIDES), in batches."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted."
        )
        parser.add_argument(
            "--batch", type=int, default=maintenance.BATCH, help="Rows per batch."
        )

    def handle(self, *args, dry_run=False, batch=maintenance.BATCH, **options):
        report = maintenance.cleanup_expired(dry_run=dry_run, batch=batch)
        verb = "Would delete" if dry_run else "Deleted"
        self.stdout.write(
            f"{verb} {report['results']} results, {report['records']} task records "
            f"and {report['events']} events."
        )
