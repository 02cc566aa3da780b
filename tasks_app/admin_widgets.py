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
