from __future__ import annotations

from datetime import datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from claw.celery import registered_tasks
from tasks_app import services, text
from tasks_app.models import TaskRecord


def parse_since(value: str) -> datetime:
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value)
        if day is None:
            raise CommandError(
                f"--since: expected YYYY-MM-DD or an ISO datetime, got {value!r}"
            )
        moment = datetime.combine(day, time.min)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


class Command(BaseCommand):
    help = (
        "Start a new attempt of every failed (or lost) record of a task since a date."
    )

    def add_arguments(self, parser):
        parser.add_argument("--task", required=True, help="Task name, e.g. tests.fail")
        parser.add_argument(
            "--since", required=True, help="YYYY-MM-DD or ISO datetime (finished at)"
        )
        parser.add_argument(
            "--include-lost", action="store_true", help="Retry LOST records too."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="List, retry nothing."
        )

    def handle(self, *args, task, since, include_lost=False, dry_run=False, **opts):
        moment = parse_since(since)
        if (
            task not in registered_tasks()
            and not TaskRecord.objects.filter(name=task).exists()
        ):
            # A typo would otherwise "retry 0 records" and look like good news.
            raise CommandError(
                f"--task: unknown task {task!r} (not registered and no record has "
                "that name)"
            )
        states = [TaskRecord.State.FAILURE]
        if include_lost:
            states.append(TaskRecord.State.LOST)
        records = TaskRecord.objects.filter(
            name=task, state__in=states, finished_at__gte=moment
        ).order_by("pk")
        if dry_run:
            retried = skipped = 0
            for retried, record in enumerate(records.iterator(), 1):  # noqa: B007
                error = text.first_line(record.error, 100)
                self.stdout.write(f"  would retry #{record.pk}: {error}")
        else:
            # all at once: their messages go to the broker in one round
            done, refused = services.retry_many(records.iterator())
            for record, exc in refused:
                self.stdout.write(f"  skipped #{record.pk}: {exc}")
            retried, skipped = len(done), len(refused)
        verb = "Would retry" if dry_run else "Retried"
        self.stdout.write(
            f"{verb} {retried} {task} record(s) failed since {moment:%Y-%m-%d %H:%M}"
            + (f"; skipped {skipped}." if skipped else ".")
        )
