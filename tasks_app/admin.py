"""The operations console: task records, their timelines, retry/cancel, workers."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.admin import GenericTabularInline
from django.contrib.contenttypes.models import ContentType
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST
from django_celery_results.models import TaskResult

from tasks_app import dashboard, services, workers
from tasks_app.admin_forms import ArgumentsForm, NewTaskForm
from tasks_app.models import StaffAlert, TaskRecord

BADGE_COLOURS = {
    "PENDING": "#6c757d",
    "STARTED": "#0d6efd",
    "RETRY": "#fd7e14",
    "SUCCESS": "#198754",
    "FAILURE": "#dc3545",
    "REVOKED": "#495057",
    "LOST": "#6f42c1",
}


class EstimatedCountPaginator(Paginator):
    """Never runs COUNT(*) over the whole table; past 10k rows it stops counting.

    An exact count of millions of rows takes seconds on PostgreSQL; the list only
    needs to know whether there is a next page.
    """

    LIMIT = 10_000

    def __init__(self, *args, limit: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.limit = limit or self.LIMIT

    @cached_property
    def count(self) -> int:
        # COUNT(*) over a LIMITed subquery: the ids never travel to Python.
        return self.object_list[: self.limit + 1].count()


def state_badge(state: str, label: str) -> str:
    return format_html(
        '<span class="claw-badge" style="background:{};color:#fff;padding:2px 6px;'
        'border-radius:4px;font-size:11px">{}</span>',
        BADGE_COLOURS.get(state, "#6c757d"),
        label,
    )


def progress_bar(record: TaskRecord) -> str:
    percent = record.progress_percent
    if percent is None:
        return "–"
    return format_html(
        '<div class="claw-progress" title="{}" style="width:110px;background:#e9ecef;'
        'border-radius:3px"><div style="width:{}%;background:#0d6efd;height:10px;'
        'border-radius:3px"></div></div><small>{}/{}</small>',
        record.progress_message,
        percent,
        record.progress_current,
        record.progress_total,
    )


SEARCH_COUNT_LIMIT = 1_000  # search results stop counting here


def search_records(queryset, term: str):
    """Records whose Celery id is term or whose task name contains it.

    Each side has an index: celery_id's unique one and, on PostgreSQL, a trigram
    GIN index on UPPER(name) (migration 0003), so a rare name is found in a
    fraction of a millisecond and a common one by walking the newest ids. The
    admin's default search would compare UPPER(id::text) and UPPER(celery_id)
    too, which no index serves, and scan the whole table.
    """
    term = term.strip()
    if not term:
        return queryset
    return queryset.filter(Q(celery_id=term) | Q(name__icontains=term))


class TaskNameFilter(admin.SimpleListFilter):
    """Choices from the registered tasks, not SELECT DISTINCT over millions of rows."""

    title = "task name"
    parameter_name = "name"

    def lookups(self, request, model_admin):
        from claw.celery import registered_tasks

        names = sorted(n for n in registered_tasks() if not n.startswith("celery."))
        return [(n, n) for n in names]

    def queryset(self, request, queryset):
        return queryset.filter(name=self.value()) if self.value() else queryset


class QueueFilter(admin.SimpleListFilter):
    title = "queue"
    parameter_name = "queue"

    def lookups(self, request, model_admin):
        return [(q, q) for q in settings.CLAW_QUEUES]

    def queryset(self, request, queryset):
        return queryset.filter(queue=self.value()) if self.value() else queryset


class OwnerFilter(admin.SimpleListFilter):
    """Owners from the user table (never a DISTINCT over the records), and "mine"."""

    title = "owner"
    parameter_name = "owner"

    def lookups(self, request, model_admin):
        from django.contrib.auth import get_user_model

        users = get_user_model().objects.order_by("username")[:100]
        return [("me", "me"), ("none", "nobody (beat, canvas)")] + [
            (str(u.pk), u.get_username()) for u in users
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "me":
            return queryset.filter(owner=request.user)
        if value == "none":
            return queryset.filter(owner__isnull=True)
        if value and value.isdigit():
            return queryset.filter(owner_id=int(value))
        return queryset


@admin.register(TaskRecord)
class TaskRecordAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "state_",
        "progress",
        "attempts",
        "duration",
        "queue",
        "priority",
        "worker",
        "owner",
        "created_at",
    )
    list_filter = ("state", QueueFilter, TaskNameFilter, OwnerFilter, "created_at")
    search_fields = ("=celery_id", "name")  # see search_records
    list_select_related = ("owner",)
    raw_id_fields = ("owner", "parent", "root")
    readonly_fields = [f.name for f in TaskRecord._meta.fields if f.name != "id"] + [
        "arguments",
        "timeline",
        "results",
        "target_link",
        "children_links",
    ]
    fieldsets = (
        (None, {"fields": ("name", "state", "queue", "priority", "owner", "worker")}),
        (
            "Progress",
            {"fields": ("progress_current", "progress_total", "progress_message")},
        ),
        (
            "Attempts",
            {
                "fields": (
                    "attempts",
                    "deliveries",
                    "celery_id",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "eta",
                    "cancel_requested",
                )
            },
        ),
        ("Arguments", {"fields": ("arguments",)}),
        ("Outcome", {"fields": ("error", "traceback", "results")}),
        ("Timeline", {"fields": ("timeline",)}),
        (
            "Relations",
            {"fields": ("parent", "root", "children_links", "group_id", "target_link")},
        ),
    )
    actions = ("retry_selected", "cancel_selected")
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    list_per_page = 50
    ordering = ("-id",)

    def has_add_permission(self, request) -> bool:
        return False  # records are written by services only

    def get_paginator(self, request, queryset, per_page, orphans=0, **kwargs):
        # A search for a common task name matches a quarter of a million rows;
        # counting the first 10,000 of them in id order reads 40,000 rows.
        limit = SEARCH_COUNT_LIMIT if request.GET.get("q") else None
        return EstimatedCountPaginator(
            queryset, per_page, orphans, limit=limit, **kwargs
        )

    def has_change_permission(self, request, obj=None) -> bool:
        # Records change only through services (the actions and the pages below),
        # so the detail page is a read-only view without Save buttons.
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # cleanup_expired_results deletes records past retention

    def get_search_results(self, request, queryset, search_term):
        # Searching arguments scans JSON; only do it when asked with "args:".
        if search_term.startswith("args:"):
            needle = search_term[5:].strip()
            return queryset.filter(args__icontains=needle) | queryset.filter(
                kwargs__icontains=needle
            ), False
        if search_term.isdigit():
            return queryset.filter(pk=int(search_term)), False
        return search_records(queryset, search_term), False

    @admin.display(description="State", ordering="state")
    def state_(self, obj: TaskRecord) -> str:
        return state_badge(obj.state, obj.get_state_display())

    @admin.display(description="Progress")
    def progress(self, obj: TaskRecord) -> str:
        return progress_bar(obj)

    @admin.display(description="Duration")
    def duration(self, obj: TaskRecord) -> str:
        if obj.started_at and obj.finished_at:
            return f"{(obj.finished_at - obj.started_at).total_seconds():.1f}s"
        return "–"

    @admin.display(description="Arguments")
    def arguments(self, obj: TaskRecord) -> str:
        return format_html(
            "<pre>{}</pre>",
            json.dumps(
                {"args": obj.args, "kwargs": obj.kwargs, "options": obj.options},
                indent=2,
                ensure_ascii=False,
            ),
        )

    @admin.display(description="Timeline")
    def timeline(self, obj: TaskRecord) -> str:
        rows = [
            format_html(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code>"
                "</td></tr>",
                event.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                event.kind,
                event.attempt,
                event.worker,
                json.dumps(event.data, ensure_ascii=False)[:300],
            )
            for event in obj.events.all()[:500]
        ]
        return format_html(
            '<table class="claw-timeline"><tr><th>time</th><th>event</th>'
            "<th>attempt</th><th>worker</th><th>data</th></tr>{}</table>",
            mark_safe("".join(rows)),  # each row came from format_html
        )

    @admin.display(description="Results (every attempt)")
    def results(self, obj: TaskRecord) -> str:
        ids = set(obj.events.exclude(celery_id="").values_list("celery_id", flat=True))
        ids.add(obj.celery_id)
        rows = [
            format_html(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td><pre>{}</pre>"
                "</td></tr>",
                result.task_id,
                result.status,
                result.date_done,
                (result.result or "")[:2000],
            )
            for result in TaskResult.objects.filter(task_id__in=ids).order_by(
                "date_created"
            )
        ]
        if not rows:
            return "No stored result yet."
        return format_html(
            "<table><tr><th>attempt id</th><th>status</th><th>done</th>"
            "<th>result</th></tr>{}</table>",
            mark_safe("".join(rows)),  # each row came from format_html
        )

    @admin.display(description="Children")
    def children_links(self, obj: TaskRecord) -> str:
        children = list(
            obj.children.order_by("id").values_list("id", "name", "state")[:200]
        )
        if not children:
            return "–"
        return format_html_join(
            ", ",
            '<a href="{}">#{} {} ({})</a>',
            (
                (
                    reverse("admin:tasks_app_taskrecord_change", args=[pk]),
                    pk,
                    name,
                    state,
                )
                for pk, name, state in children
            ),
        )

    @admin.display(description="Works on")
    def target_link(self, obj: TaskRecord) -> str:
        if not obj.content_type_id or obj.object_id is None:
            return "–"
        model = obj.content_type.model_class()
        if model is None:
            return "–"
        opts = model._meta
        try:
            url = reverse(
                f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.object_id]
            )
        except NoReverseMatch:  # a model without an admin page
            return f"{opts.verbose_name} #{obj.object_id}"
        return format_html(
            '<a href="{}">{} #{}</a>', url, opts.verbose_name, obj.object_id
        )

    @admin.action(description="Retry selected tasks")
    def retry_selected(self, request, queryset) -> None:
        self._apply(request, queryset, services.retry, "Retried")

    @admin.action(description="Cancel selected tasks")
    def cancel_selected(self, request, queryset) -> None:
        self._apply(request, queryset, services.cancel, "Cancelled")

    def _apply(self, request, queryset, operation, verb: str) -> None:
        changed, skipped = 0, {}
        for record in queryset.iterator(chunk_size=500):
            try:
                operation(record)
                changed += 1
            except services.InvalidTransition:
                skipped[record.state] = skipped.get(record.state, 0) + 1
        reasons = ", ".join(f"{n} {state}" for state, n in sorted(skipped.items()))
        level = messages.SUCCESS if changed else messages.WARNING
        self.message_user(
            request,
            f"{verb} {changed} task(s); skipped {sum(skipped.values())}"
            + (f" not in an allowed state ({reasons})." if skipped else "."),
            level,
        )

    # --- the Workers page -----------------------------------------------------

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
            index = int(request.POST.get("group", -1))
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
        }
        return TemplateResponse(request, "admin/tasks_app/failures.html", context)

    def new_task_view(self, request):
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
        context = {
            **self.admin_site.each_context(request),
            "title": "Celery workers",
            "workers": workers.cluster(),
            "queues": workers.queue_lengths(),
            "confirm": request.GET.get("confirm_shutdown"),
        }
        return TemplateResponse(request, "admin/tasks_app/workers.html", context)

    def workers_control(self, request):
        """POST-only (CSRF-checked) pool restart / grow / shrink / shutdown."""
        operation = request.POST.get("operation")
        worker = request.POST.get("worker", "")
        destination = [worker] if worker else None
        if operation == "shutdown":
            if not worker or request.POST.get("confirm") != "yes":
                messages.error(request, "Shutdown needs a worker and a confirmation.")
                return HttpResponseRedirect(reverse("admin:tasks_app_workers"))
            workers.shutdown([worker])
        elif operation == "restart":
            workers.pool_restart(destination)
        elif operation in ("grow", "shrink"):
            if not worker:
                messages.error(request, "Choose a worker.")
                return HttpResponseRedirect(reverse("admin:tasks_app_workers"))
            getattr(workers, f"pool_{operation}")([worker])
        else:
            messages.error(request, f"Unknown operation {operation!r}.")
            return HttpResponseRedirect(reverse("admin:tasks_app_workers"))
        LogEntry.objects.create(
            user_id=request.user.pk,
            content_type_id=ContentType.objects.get_for_model(TaskRecord).pk,
            object_id=None,
            object_repr=worker or "all workers",
            action_flag=CHANGE,
            change_message=f"worker control: {operation} {worker or 'all'}",
        )
        messages.success(request, f"Sent {operation} to {worker or 'all workers'}.")
        return HttpResponseRedirect(reverse("admin:tasks_app_workers"))


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


class TaskRecordInline(GenericTabularInline):
    """The tasks that worked on a domain object (documents, messages, ...)."""

    model = TaskRecord
    ct_field = "content_type"
    ct_fk_field = "object_id"
    fields = ("record_link", "name", "state", "progress_message", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0
    ordering = ("-id",)

    @admin.display(description="Task")
    def record_link(self, obj: TaskRecord) -> str:
        url = reverse("admin:tasks_app_taskrecord_change", args=[obj.pk])
        return format_html('<a href="{}">#{}</a>', url, obj.pk)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(StaffAlert)
class StaffAlertAdmin(admin.ModelAdmin):
    list_display = (
        "subject",
        "active",
        "times_sent",
        "first_raised_at",
        "last_sent_at",
    )
    list_filter = ("active",)
    readonly_fields = [f.name for f in StaffAlert._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


# Replaces django-celery-beat's PeriodicTask admin; imported last because it uses
# state_badge above, and after django_celery_beat's admin (INSTALLED_APPS order).
from tasks_app import admin_schedules  # noqa: E402, F401
