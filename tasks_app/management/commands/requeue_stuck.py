from __future__ import annotations

from django.core.management.base import BaseCommand

from tasks_app import maintenance
from tasks_app.maintenance import ids


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
        would = "would be " if dry_run else ""
        lines = [
            ("Live workers", ", ".join(report["live_workers"]) or "none"),
            (
                f"Stuck STARTED records {would}marked LOST",
                ids(report["lost"]),
            ),
            (
                f"{'Would re-queue' if dry_run else 'Re-queued'}",
                ids(report["requeued"]),
            ),
            (
                f"Vanished PENDING records {would}re-published",
                ids(report["republished"]),
            ),
        ]
        if not no_alerts:
            alerts = ", ".join(report["alerts"]) or "none"
            lines.append((f"Alerts {would}raised", alerts))
        width = max(len(label) for label, _ in lines) + 1
        for label, value in lines:
            self.stdout.write(f"{label + ':':<{width}} {value}")
        if not report["broker_readable"]:
            self.stdout.write(
                self.style.WARNING("Broker unreadable: nothing re-published.")
            )
