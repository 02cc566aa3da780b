from django.core.management.base import BaseCommand

from tasks_app.schedules import ensure_default_schedules


class Command(BaseCommand):
    help = "Create the default periodic tasks that are missing (never edits existing ones)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Say what would be created."
        )

    def handle(self, *args, dry_run=False, **options):
        if dry_run:
            from django_celery_beat.models import PeriodicTask

            from tasks_app.schedules import CLEANUP, HEALTH, ROLLUPS

            missing = [
                n
                for n in (CLEANUP, HEALTH, ROLLUPS)
                if not PeriodicTask.objects.filter(name=n).exists()
            ]
            self.stdout.write(f"Would create: {', '.join(missing) or 'nothing'}")
            return
        created = ensure_default_schedules()
        self.stdout.write(f"Created: {', '.join(created) or 'nothing (all present)'}")
