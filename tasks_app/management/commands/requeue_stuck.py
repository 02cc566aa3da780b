from __future__ import annotations

from django.core.management.base import BaseCommand

from tasks_app import maintenance


class Command(BaseCommand):
    help = (
        "Run the health reconciliation now: STARTED records past their time limit on "
        "a dead worker become LOST and are re-queued; PENDING records whose message "
        "vanished from the broker are re-published."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Report, change nothing."
        )
        parser.add_argument(
            "--no-alerts", action="store_true", help="Skip the staff alert checks."
        )

    def handle(self, *args, dry_run=False, no_alerts=False, **options):
        report = maintenance.check_health(dry_run=dry_run, alerts_enabled=not no_alerts)
        prefix = "Would mark" if dry_run else "Marked"
        self.stdout.write(
            f"Live workers: {', '.join(report['live_workers']) or 'none'}"
        )
        self.stdout.write(
            f"{prefix} {len(report['lost'])} lost "
            f"({_ids(report['lost'])}); re-queued {len(report['requeued'])}."
        )
        if not report["broker_readable"]:
            self.stdout.write(
                self.style.WARNING("Broker unreadable: nothing re-published.")
            )
        verb = "Would re-publish" if dry_run else "Re-published"
        self.stdout.write(
            f"{verb} {len(report['republished'])} vanished pending "
            f"({_ids(report['republished'])})."
        )
        if not no_alerts:
            self.stdout.write(f"Alerts: {', '.join(report['alerts']) or 'none'}")


def _ids(ids: list[int]) -> str:
    return ", ".join(f"#{pk}" for pk in ids[:20]) + (" ..." if len(ids) > 20 else "")
