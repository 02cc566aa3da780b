"""django-celery-beat's schedules admin, plus next run, last outcome and run now."""

from __future__ import annotations

import json
import zoneinfo

from django.conf import settings
from django.contrib import admin, messages
from django.utils import timezone
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from tasks_app import display, services
from tasks_app.admin_widgets import state_badge
from tasks_app.models import TaskRecord


def next_run(task: PeriodicTask):
    """When beat will next send it, in the schedule's own timezone (None if never)."""
    if not task.enabled or (task.one_off and task.total_run_count):
        return None
    schedule = task.schedule
    now = timezone.now()
    last = task.last_run_at or task.start_time or task.date_changed or now
    remaining = schedule.remaining_estimate(last)
    when = now + max(remaining, remaining * 0)  # overdue means due now
    zone = getattr(task.crontab, "timezone", None) or settings.TIME_ZONE
    return when.astimezone(zoneinfo.ZoneInfo(str(zone)))


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    # Next and last run beside the name, where an operator looks first.
    list_display = (
        "name",
        "enabled",
        "next_run_",
        "last_outcome",
        "last_run_at",
        "scheduler",
        "one_off",
    )
    # One "run now": django-celery-beat's own run_tasks sends without the ledger's
    # owner, so only ours is offered.
    actions = (
        *(a for a in BeatPeriodicTaskAdmin.actions if a != "run_tasks"),
        "run_now_selected",
    )

    @admin.display(description="Next run")
    def next_run_(self, obj: PeriodicTask) -> str:
        # In the admin's one time zone, like every other time on these pages; a
        # crontab in another zone still fires at its own zone's hour.
        when = next_run(obj)
        return display.local(when) if when else "–"

    @admin.display(description="Last run")
    def last_outcome(self, obj: PeriodicTask) -> str:
        record = (
            TaskRecord.objects.filter(options__periodic_task_name=obj.name)
            .order_by("-id")
            .first()
        )
        if record is None:
            return "–"
        return state_badge(record.state, record.get_state_display())

    # Whoever may change a schedule may already make it run at once; nobody
    # else may (is_staff alone only opens the admin).
    @admin.action(
        description="Run selected schedules now (same queue and priority)",
        permissions=["change"],
    )
    def run_now_selected(self, request, queryset) -> None:
        sent, skipped = 0, []
        for task in queryset:
            try:
                services.submit(
                    task.task,
                    args=json.loads(task.args or "[]"),
                    kwargs=json.loads(task.kwargs or "{}"),
                    owner=request.user,
                    queue=task.queue or None,
                    priority=task.priority,
                )
                sent += 1
            except (services.UnknownTask, ValueError) as exc:
                skipped.append(f"{task.name}: {exc}")
        self.message_user(
            request,
            f"Sent {sent} schedule(s) now; skipped {len(skipped)}"
            + (f" ({'; '.join(skipped)})" if skipped else "."),
            messages.SUCCESS if sent else messages.WARNING,
        )
