"""The operations console: task records, their timelines, retry/cancel, workers."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import Q
from django.urls import NoReverseMatch, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django_celery_results.models import TaskResult

from tasks_app import display, services
from tasks_app.admin_views import CANCEL, RETRY, OperationsViews, live_cells
from tasks_app.models import StaffAlert, TaskRecord


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

    @property
    def capped(self) -> bool:
        """More matches than were counted (the list says "more than <limit>")."""
        return self.count > self.limit


# A search or a filter stops counting its matches here: counting the first
# 10,000 FAILURE records of a million reads 10,000 index entries (11 ms), the
# first 1,000 a tenth of that. The dashboard has the exact counts by state.
FILTERED_COUNT_LIMIT = 1_000
# Query parameters that page or order the list without filtering it.
UNFILTERED_PARAMS = {"p", "o", "e"}


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

        # The signed-in user is "me" only, not listed a second time by name.
        users = (
            get_user_model()
            .objects.exclude(pk=request.user.pk)
            .order_by("username")[:100]
        )
        me = f"me ({request.user.get_username()})"
        return [("me", me), ("none", "nobody (beat, canvas)")] + [
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


def live_cell(record: TaskRecord, field: str) -> str:
    """One of live_cells(), wrapped so the live page can update it in place."""
    return format_html(
        '<span data-claw-record="{}" data-claw-field="{}">{}</span>',
        record.pk,
        field,
        live_cells(record)[field],
    )


@admin.register(TaskRecord)
class TaskRecordAdmin(OperationsViews, admin.ModelAdmin):
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
        "created",
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
        "progress_detail",
    ]
    fieldsets = (
        (None, {"fields": ("name", "state", "queue", "priority", "owner", "worker")}),
        ("Progress", {"fields": ("progress_detail",)}),
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
        filtered = any(k not in UNFILTERED_PARAMS for k in request.GET)
        limit = FILTERED_COUNT_LIMIT if filtered else None
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
        return live_cell(obj, "state")

    @admin.display(description="Progress")
    def progress(self, obj: TaskRecord) -> str:
        return live_cell(obj, "progress")

    @admin.display(description="Progress")
    def progress_detail(self, obj: TaskRecord) -> str:
        return format_html(
            "{} {}", live_cell(obj, "state"), live_cell(obj, "progress_detail")
        )

    @admin.display(description="Created", ordering="created_at")
    def created(self, obj: TaskRecord) -> str:
        # The timeline's format, to the minute: one way to write a time, and
        # narrow enough for the list to fit a 1366 px screen.
        return display.local(obj.created_at)[:16]

    @admin.display(description="Duration")
    def duration(self, obj: TaskRecord) -> str:
        return live_cell(obj, "duration")

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
                display.local(event.at, ms=True),  # the page's one time zone
                event.kind,
                event.attempt,
                event.worker,
                json.dumps(event.data, ensure_ascii=False)[:300],
            )
            for event in obj.events.all()[:500]
        ]
        # data-after: the live page asks for the events after the last one shown.
        last = obj.events.order_by("-id").values_list("id", flat=True).first()
        return format_html(
            '<table class="claw-timeline" data-claw-timeline="{}" data-after="{}">'
            "<tr><th>time</th><th>event</th>"
            "<th>attempt</th><th>worker</th><th>data</th></tr>{}</table>",
            obj.pk,
            last or 0,
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
                display.state_label(result.status),
                display.local(result.date_done),
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
                    display.state_label(state),
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

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm(RETRY)

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm(CANCEL)

    # An action its user lacks the permission for is not offered, and posting
    # it anyway changes nothing ("No action selected").
    @admin.action(description="Retry selected tasks", permissions=["retry"])
    def retry_selected(self, request, queryset) -> None:
        self._apply(request, queryset, services.retry, "Retried")

    @admin.action(description="Cancel selected tasks", permissions=["cancel"])
    def cancel_selected(self, request, queryset) -> None:
        self._apply(request, queryset, services.cancel, "Cancelled")

    def _apply(self, request, queryset, operation, verb: str) -> None:
        changed, skipped, refused = 0, {}, {}
        if operation is services.retry:
            # all at once: their messages go to the broker in one round
            retried, failures = services.retry_many(queryset.iterator(chunk_size=500))
            changed = len(retried)
        else:
            failures = []
            for record in queryset.iterator(chunk_size=500):
                try:
                    operation(record)
                    changed += 1
                except services.InvalidTransition as exc:
                    failures.append((record, exc))
        for record, exc in failures:
            if (
                operation is services.retry
                and record.state in TaskRecord.RETRYABLE_STATES
            ):
                # refused by its domain (a writing job): say why
                refused[str(exc)] = refused.get(str(exc), 0) + 1
            else:
                skipped[record.state] = skipped.get(record.state, 0) + 1
        reasons = ", ".join(
            f"{n} {display.state_label(state)}" for state, n in sorted(skipped.items())
        )
        level = messages.SUCCESS if changed else messages.WARNING
        self.message_user(
            request,
            f"{verb} {changed} task(s); skipped {sum(skipped.values())}"
            + (f" not in an allowed state ({reasons})." if skipped else "."),
            level,
        )
        for reason, n in list(refused.items())[:5]:
            self.message_user(request, f"Refused {n}: {reason}", messages.WARNING)


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


# Replace django-celery-beat's PeriodicTask admin and DRF's token admin: imported
# after theirs (INSTALLED_APPS order).
from tasks_app import admin_schedules, admin_tokens  # noqa: E402, F401
