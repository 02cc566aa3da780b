"""The task admin's own pages: dashboard, failures, new task, edit and retry,
workers (with pool control). TaskRecordAdmin (tasks_app.admin) mixes them in."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from tasks_app import dashboard, services, workers
from tasks_app.admin_forms import ArgumentsForm, NewTaskForm
from tasks_app.models import TaskRecord

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
        stats = dashboard.summary(24, slowest=True)
        by_state, names = stats["by_state"], stats["by_name"]
        chart_rows = dashboard.hourly_filled(stats["start"], rows=stats["hourly"])
        context = {
            **self.admin_site.each_context(request),
            "title": "Task dashboard (last 24 h)",
            "by_state": [(s, by_state.get(s, 0)) for s in TaskRecord.State.values],
            "chart": hourly_chart(chart_rows),
            "slowest": stats["slowest"],
            "failing": sorted(
                ((n, c) for n, c in names.items() if c["failed"]),
                key=lambda item: -item[1]["failed"],
            )[:5],
            "failure_rate": dashboard.failure_rate(by_state),
            "queues": _safely(workers.queue_lengths, {}),
            "live_workers": _safely(
                lambda: dashboard.cached("claw:live-workers", workers.ping), []
            ),
            "cache_seconds": settings.CLAW_STATS_CACHE_SECONDS,
        }
        return TemplateResponse(request, "admin/tasks_app/dashboard.html", context)

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


def _safely(call, default):
    # The dashboard must render even when the broker is down.
    try:
        return call()
    except Exception:
        return default


def hourly_chart(rows: list[dict], width: int = 720, height: int = 160) -> str:
    """Finished (blue) and failed (red) per hour as a server-rendered SVG bar chart."""
    if not rows:
        return ""
    peak = max(r["finished"] for r in rows) or 1
    step = width / max(len(rows), 1)
    bars = []
    for i, row in enumerate(rows):
        h_all = height * row["finished"] / peak
        h_failed = height * row["failed"] / peak
        x = i * step
        # format_html escapes its arguments to strings first, so numbers are
        # formatted here.
        bars.append(
            format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" fill="#0d6efd">'
                "<title>{}: {} finished, {} failed</title></rect>"
                '<rect x="{}" y="{}" width="{}" height="{}" fill="#dc3545"/>',
                f"{x:.1f}",
                f"{height - h_all:.1f}",
                f"{step * 0.8:.1f}",
                f"{h_all:.1f}",
                f"{row['hour']:%H:00}",
                row["finished"],
                row["failed"],
                f"{x:.1f}",
                f"{height - h_failed:.1f}",
                f"{step * 0.8:.1f}",
                f"{h_failed:.1f}",
            )
        )
    return format_html(
        '<svg class="claw-chart" width="{}" height="{}" role="img">{}</svg>',
        width,
        height,
        mark_safe("".join(bars)),  # each bar came from format_html
    )
