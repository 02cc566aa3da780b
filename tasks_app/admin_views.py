"""The task admin's own pages: dashboard, failures, new task, edit and retry,
workers (with pool control). TaskRecordAdmin (tasks_app.admin) mixes them in."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from tasks_app import (
    charts,
    dashboard,
    display,
    metrics,
    rollups,
    services,
    workers,
)
from tasks_app.admin_forms import ArgumentsForm, NewTaskForm
from tasks_app.admin_widgets import progress_bar, state_badge
from tasks_app.models import TaskEvent, TaskRecord

# Staff may look; changing anything takes the model permission for it
# (TaskRecord.Meta.permissions), granted per user or group like any other.
RETRY = "tasks_app.retry_taskrecord"
CANCEL = "tasks_app.cancel_taskrecord"
SUBMIT = "tasks_app.submit_taskrecord"
CONTROL_WORKERS = "tasks_app.control_workers"


def require(request, *perms: str) -> None:
    """403 unless the user holds every one of perms."""
    if not request.user.has_perms(perms):
        raise PermissionDenied


class OperationsViews:
    """URLs and views of the pages beside the task list (staff only: every view
    goes through admin_site.admin_view; POSTs keep Django's CSRF check and need
    the permission for what they change)."""

    def get_urls(self):
        extra = [
            path(
                "dashboard/",
                self.admin_site.admin_view(self.dashboard_view),
                name="tasks_app_dashboard",
            ),
            path(
                "live/",
                self.admin_site.admin_view(self.live_view),
                name="tasks_app_live",
            ),
            path(
                "failures/",
                self.admin_site.admin_view(self.failures_view),
                name="tasks_app_failures",
            ),
            path(
                "new/",
                self.admin_site.admin_view(self.new_task_view),
                name="tasks_app_new_task",
            ),
            path(
                "<int:pk>/edit-and-retry/",
                self.admin_site.admin_view(self.edit_and_retry_view),
                name="tasks_app_edit_and_retry",
            ),
            path(
                "workers/",
                self.admin_site.admin_view(self.workers_view),
                name="tasks_app_workers",
            ),
            path(
                "workers/control/",
                self.admin_site.admin_view(require_POST(self.workers_control)),
                name="tasks_app_workers_control",
            ),
        ]
        return extra + super().get_urls()

    def dashboard_view(self, request):
        # Everything but the broker's queue lengths and the worker ping comes
        # from the rollups (tasks_app.dashboard), so this page costs the same at
        # ten thousand records as at ten million.
        stats = dashboard.summary(24)
        by_state = stats["by_state"]
        context = {
            **self.admin_site.each_context(request),
            "title": "Task dashboard",
            "by_state": [
                (s, label, by_state.get(s, 0)) for s, label in TaskRecord.State.choices
            ],
            "charts": [
                (title, charts.bar_chart(dashboard.per_slot(hours, slot), **options))
                for title, hours, slot, options in DASHBOARD_CHARTS
            ],
            "types": _type_rows(stats["by_name"]),
            "queue_rows": _queue_rows(
                _safely(workers.queue_lengths, {}), stats["by_queue"]
            ),
            "failure_rate": display.percent(dashboard.failure_rate(by_state)),
            # The ping waits for replies: reused for a few seconds, as /metrics.
            "live_workers": _safely(metrics.live_workers, []),
            "cache_seconds": settings.CLAW_STATS_CACHE_SECONDS,
            "rollup_seconds": settings.CLAW_ROLLUP_SECONDS,
            "time_zone": timezone.get_current_timezone_name(),
        }
        return TemplateResponse(request, "admin/tasks_app/dashboard.html", context)

    def live_view(self, request):
        """What the live pages (tasks_app/static/tasks_app/live.js) poll: the
        cells of the records on the page and the timeline events after one.

        ?ids=1,2,3 (at most LIVE_MAX_IDS); for a task's page also ?record=<id>
        &after=<last event id>. Small and read through the primary key and the
        events' (record, id) index, whatever the page's filters were.
        """
        if not self.has_view_permission(request):
            return JsonResponse({"detail": "Not allowed."}, status=403)
        try:
            ids = _id_list(request.GET.get("ids", ""))
            record = int(request.GET.get("record") or 0)
            after = int(request.GET.get("after") or 0)
        except ValueError as exc:
            return JsonResponse({"ids": str(exc)}, status=400)
        records = TaskRecord.objects.filter(pk__in=ids)
        body = {
            "now": display.local(timezone.now()),
            "tasks": {str(r.pk): live_cells(r) for r in records},
        }
        if record:
            events = TaskEvent.objects.filter(record_id=record, id__gt=after)
            body["events"] = [
                {
                    "id": e.id,
                    "at": display.local(e.at, ms=True),
                    "kind": e.kind,
                    "attempt": e.attempt,
                    "worker": e.worker,
                    "data": json.dumps(e.data, ensure_ascii=False)[:300],
                }
                for e in events.order_by("id")[:LIVE_MAX_EVENTS]
            ]
        return JsonResponse(body)

    def failures_view(self, request):
        """Failures of the last 7 days grouped by task and normalised error."""
        start = dashboard.since(24 * 7)
        groups = dashboard.failure_groups(start)
        if request.method == "POST":
            require(request, RETRY)
            group = request.POST.get("group", "")
            index = int(group) if group.isdigit() else -1  # tampered: no group
            if not 0 <= index < len(groups):
                messages.error(request, "That group no longer exists.")
            else:
                group = groups[index]
                queryset = TaskRecord.objects.filter(
                    state=TaskRecord.State.FAILURE,
                    name=group["name"],
                    error__in=group["errors"],
                    finished_at__gte=start,
                )
                self._apply(request, queryset, services.retry, "Retried")
            return HttpResponseRedirect(reverse("admin:tasks_app_failures"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Failures (last 7 days)",
            "groups": groups,
            "can_retry": request.user.has_perm(RETRY),
        }
        return TemplateResponse(request, "admin/tasks_app/failures.html", context)

    def new_task_view(self, request):
        require(request, SUBMIT)
        form = NewTaskForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            record = services.submit(
                data["name"],
                args=data["args"],
                kwargs=data["kwargs"],
                owner=request.user,
                queue=data["queue"] or None,
                priority=data["priority"],
                countdown=data["countdown"],
                eta=data["eta"],
            )
            messages.success(request, f"Submitted task #{record.pk}.")
            return HttpResponseRedirect(
                reverse("admin:tasks_app_taskrecord_change", args=[record.pk])
            )
        return self._form_page(request, form, "New task")

    def edit_and_retry_view(self, request, pk: int):
        # new arguments make it a submission as well as a retry
        require(request, RETRY, SUBMIT)
        record = get_object_or_404(TaskRecord, pk=pk)
        initial = {"args": json.dumps(record.args), "kwargs": json.dumps(record.kwargs)}
        form = ArgumentsForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            try:
                services.retry(
                    record,
                    args=form.cleaned_data["args"],
                    kwargs=form.cleaned_data["kwargs"],
                )
            except services.InvalidTransition as exc:
                messages.error(request, str(exc))
            else:
                messages.success(
                    request, f"Task #{record.pk} retried with new arguments."
                )
            return HttpResponseRedirect(
                reverse("admin:tasks_app_taskrecord_change", args=[record.pk])
            )
        return self._form_page(request, form, f"Edit and retry {record}")

    def _form_page(self, request, form, title: str):
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "form": form,
        }
        return TemplateResponse(request, "admin/tasks_app/form.html", context)

    def workers_view(self, request):
        if not request.user.is_staff:
            return HttpResponseRedirect(reverse("admin:login"))
        cluster = workers.cluster(timeout=workers.QUICK_TIMEOUT)
        context = {
            **self.admin_site.each_context(request),
            "title": "Celery workers",
            "workers": cluster,
            "can_control": request.user.has_perm(CONTROL_WORKERS),
            "can_restart_all": any("restart" in w.controls for w in cluster),
            "queues": workers.queue_lengths(),
            "confirm": request.GET.get("confirm_shutdown"),
        }
        return TemplateResponse(request, "admin/tasks_app/workers.html", context)

    def workers_control(self, request):
        """POST-only (CSRF-checked) pool restart / grow / shrink / shutdown; says
        what each worker answered."""
        require(request, CONTROL_WORKERS)
        back = HttpResponseRedirect(reverse("admin:tasks_app_workers"))
        operation = request.POST.get("operation")
        worker = request.POST.get("worker", "")
        destination = [worker] if worker else None
        if operation == "shutdown":
            if not worker or request.POST.get("confirm") != "yes":
                messages.error(request, "Shutdown needs a worker and a confirmation.")
                return back
            send = lambda: workers.shutdown([worker])  # noqa: E731
        elif operation == "restart":
            send = lambda: workers.pool_restart(destination)  # noqa: E731
        elif operation in ("grow", "shrink"):
            if not worker:
                messages.error(request, "Choose a worker.")
                return back
            send = lambda: getattr(workers, f"pool_{operation}")([worker])  # noqa: E731
        else:
            messages.error(request, f"Unknown operation {operation!r}.")
            return back
        try:
            replies = send()
        except workers.UnknownWorker as exc:
            messages.error(request, str(exc) if exc.names else "No worker answered.")
            return back
        LogEntry.objects.create(
            user_id=request.user.pk,
            content_type_id=ContentType.objects.get_for_model(TaskRecord).pk,
            object_id=None,
            object_repr=worker or "all workers",
            action_flag=CHANGE,
            change_message=f"worker control: {operation} {worker or 'all'}: "
            + json.dumps(replies)[:400],
        )
        for name, answer in replies.items():
            if "ok" in answer:
                messages.success(request, f"{name}: {operation}: {answer['ok']}")
            else:
                messages.error(
                    request, f"{name}: {operation} failed: {answer.get('error')}"
                )
        return back


LIVE_MAX_IDS = 200
LIVE_MAX_EVENTS = 200


def _id_list(text: str) -> list[int]:
    """ "1,2,3" -> [1, 2, 3]; ValueError naming what is wrong."""
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) > LIVE_MAX_IDS:
        raise ValueError(f"At most {LIVE_MAX_IDS} ids.")
    if not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise ValueError("Comma-separated record ids.")
    return [int(p) for p in parts]


def live_cells(record: TaskRecord) -> dict:
    """The live cells of a record, as the list and the task page render them
    (each HTML fragment built with format_html)."""
    duration = "–"
    if record.started_at and record.finished_at:
        duration = display.duration(record.finished_at - record.started_at)
    return {
        "state": state_badge(record.state, record.get_state_display()),
        "progress": progress_bar(record),
        "progress_detail": progress_bar(record, wide=True),
        "duration": duration,
        "final": record.is_final,
    }


def _safely(call, default):
    # The dashboard must render even when the broker is down.
    try:
        return call()
    except Exception:
        return default


# The dashboard's finished/failed charts: title, hours back, rollup slot, and how
# the chart labels its bars.
DASHBOARD_CHARTS = (
    (
        "Last hour, per minute",
        1,
        rollups.MINUTE,
        {"label_format": "%H:%M", "every": 10, "chart_id": "chart-hour"},
    ),
    (
        "Last 24 hours, per hour",
        24,
        rollups.HOUR,
        {"label_format": "%H:00", "every": 3, "chart_id": "chart-day"},
    ),
    (
        "Last 7 days, per hour",
        24 * 7,
        rollups.HOUR,
        {"label_format": "%a %H:00", "every": 24, "chart_id": "chart-week"},
    ),
)


def _type_rows(names: dict) -> list[dict]:
    """Per task type, busiest first, with rates and durations as people read them."""
    rows = (
        {
            "name": name,
            **c,
            "failure_rate": display.percent(c["failure_rate"]),
            "run_p50": display.duration(c["run_p50"]),
            "run_p95": display.duration(c["run_p95"]),
            "wait_p95": display.duration(c["wait_p95"]),
        }
        for name, c in names.items()
    )
    return sorted(rows, key=lambda row: (-row["total"], row["name"]))


def _queue_rows(lengths: dict, by_queue: dict) -> list[dict]:
    """Per queue: backlog (the broker's), age of the oldest waiting message and
    finished per hour over the last 24 h (the rollups)."""
    names = sorted(set(lengths) | set(by_queue))
    oldest = dashboard.oldest_waiting(names)
    now = timezone.now()
    return [
        {
            "name": queue,
            "backlog": lengths.get(queue),
            "latency": display.duration(
                (now - oldest[queue]) if oldest.get(queue) else None
            ),
            "per_hour": by_queue.get(queue, {}).get("finished", 0) / 24,
        }
        for queue in names
    ]
