from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db.models import Count, Min

from tasks_app import workers
from tasks_app.models import TaskRecord


class Command(BaseCommand):
    help = "Show live workers, queue lengths, records by state and the oldest pending."

    def handle(self, *args, **options):
        out = self.stdout
        try:
            live = workers.ping()
        except Exception as exc:
            live = []
            out.write(self.style.ERROR(f"Broker unreachable: {exc!r}"))
        out.write(f"Workers ({len(live)} live):")
        for name in live:
            out.write(f"  {name}")
        if not live:
            out.write(self.style.WARNING("  none answered"))
        out.write("Queues (messages waiting):")
        try:
            lengths = workers.queue_lengths()
        except Exception as exc:
            lengths = {}
            out.write(self.style.ERROR(f"  cannot read: {exc!r}"))
        for queue, length in lengths.items():
            out.write(f"  {queue:<24} {length}")
        counts = dict(
            TaskRecord.objects.order_by()
            .values_list("state")
            .annotate(n=Count("id"))
            .values_list("state", "n")
        )
        out.write("Records by state:")
        for state in TaskRecord.State.values:
            out.write(f"  {state:<8} {counts.get(state, 0)}")
        oldest = TaskRecord.objects.filter(state=TaskRecord.State.PENDING).aggregate(
            at=Min("created_at")
        )["at"]
        if oldest:
            record = (
                TaskRecord.objects.filter(state=TaskRecord.State.PENDING)
                .order_by("created_at")
                .first()
            )
            out.write(f"Oldest pending: #{record.pk} {record.name} since {oldest:%c}")
        else:
            out.write("Oldest pending: none")
