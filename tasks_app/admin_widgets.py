"""Admin widgets every domain's admin uses: the state badge, the progress bar and
the inline of the task records that worked on an object."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.contenttypes.admin import GenericTabularInline
from django.urls import reverse
from django.utils.html import format_html

from tasks_app.models import TaskRecord

BADGE_COLOURS = {
    "PENDING": "#6c757d",
    "STARTED": "#0d6efd",
    "RETRY": "#fd7e14",
    "SUCCESS": "#198754",
    "FAILURE": "#dc3545",
    "REVOKED": "#495057",
    "LOST": "#6f42c1",
}


def state_badge(state: str, label: str) -> str:
    return format_html(
        '<span class="claw-badge" style="background:{};color:#fff;padding:2px 6px;'
        'border-radius:4px;font-size:11px">{}</span>',
        BADGE_COLOURS.get(state, "#6c757d"),
        label,
    )


def progress_bar(record: TaskRecord, *, wide: bool = False) -> str:
    """A bar with its percentage; "3 of 4" and the message on hover (and, wide,
    beside it on a task's page). A finished record's bar is full."""
    percent = record.progress_percent
    if percent is None:
        if record.state != TaskRecord.State.SUCCESS:
            return "–"
        percent = 100
    width = 320 if wide else 110
    detail = f"{record.progress_current} of {record.progress_total}"
    if record.progress_message:
        detail += f": {record.progress_message}"
    return format_html(
        '<div class="claw-progress" role="progressbar" aria-valuenow="{}"'
        ' aria-valuemin="0" aria-valuemax="100" title="{}" style="display:inline-block;'
        'vertical-align:middle;width:{}px;background:#e9ecef;border-radius:3px">'
        '<div class="claw-progress-fill" style="width:{}%;background:{};height:10px;'
        'border-radius:3px"></div></div> <small class="claw-progress-text">{}%{}'
        "</small>",
        percent,
        detail,
        width,
        percent,
        BADGE_COLOURS.get(record.state, "#0d6efd"),
        percent,
        f" ({detail})" if wide else "",
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
