"""Conversations with their messages and tasks, the usage ledger, notifications."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Avg, Count, F, Q, Sum
from django.db.models.functions import TruncDate
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator

from claw import conversations, services
from claw.models import Conversation, Message, Notification
from tasks_app.admin_widgets import TaskRecordInline, state_badge

TOTALS_ROWS = 31  # days, users or conversations shown in each usage table


def task_link(message: Message) -> str:
    if not message.task_id:
        return "–"
    url = reverse("admin:tasks_app_taskrecord_change", args=[message.task_id])
    record = message.task
    return format_html(
        '<a href="{}">#{}</a> {}',
        url,
        message.task_id,
        state_badge(record.state, record.get_state_display()),
    )


class ReadOnlyAdminMixin:
    """Rows written by claw.conversations only: nothing is added or edited here."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class MessageInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Message
    fields = (
        "message_link",
        "role",
        "status",
        "excerpt",
        "total_tokens",
        "latency_ms",
        "model",
        "task_",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    ordering = ("id",)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("task")

    @admin.display(description="Message")
    def message_link(self, obj: Message) -> str:
        url = reverse("admin:claw_message_change", args=[obj.pk])
        return format_html('<a href="{}">#{}</a>', url, obj.pk)

    @admin.display(description="Content")
    def excerpt(self, obj: Message) -> str:
        return Truncator(obj.content).chars(120)

    @admin.display(description="Tokens")
    def total_tokens(self, obj: Message) -> int:
        return obj.total_tokens

    @admin.display(description="Task (timeline)")
    def task_(self, obj: Message) -> str:
        return task_link(obj)


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "__str__",
        "owner",
        "message_count",
        "tokens",
        "updated_at",
        "created_at",
    )
    list_select_related = ("owner",)
    list_filter = ("provider", "created_at")
    search_fields = ("title", "owner__username")
    date_hierarchy = "created_at"
    raw_id_fields = ("owner",)
    readonly_fields = [
        *(f.name for f in Conversation._meta.fields if f.name != "id"),
        "knowledge_bases",
    ]
    inlines = (MessageInline,)

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                _messages=Count("messages"),
                _tokens=Sum("messages__prompt_tokens")
                + Sum("messages__completion_tokens"),
            )
        )

    @admin.display(description="Messages", ordering="_messages")
    def message_count(self, obj) -> int:
        return obj._messages

    @admin.display(description="Tokens", ordering="_tokens")
    def tokens(self, obj) -> int:
        return obj._tokens or 0

    def delete_model(self, request, obj) -> None:
        conversations.delete_conversation(obj)

    def delete_queryset(self, request, queryset) -> None:
        for conversation in queryset:
            conversations.delete_conversation(conversation)


def usage_totals(queryset) -> dict:
    """Replies, tokens and mean latency of the assistant messages in queryset:
    overall, per day (in the current time zone), per user and per conversation."""
    replies = queryset.filter(role=Message.Role.ASSISTANT).order_by()
    sums = {
        "replies": Count("id"),
        "prompt": Sum("prompt_tokens", default=0),
        "completion": Sum("completion_tokens", default=0),
        "total": Sum(F("prompt_tokens") + F("completion_tokens"), default=0),
        "latency": Avg("latency_ms", filter=Q(status=Message.Status.DONE)),
    }
    day = TruncDate("created_at", tzinfo=timezone.get_current_timezone())
    per_day = replies.annotate(day=day).values("day").annotate(**sums)
    per_user = replies.values(user=F("conversation__owner__username")).annotate(**sums)
    per_conversation = replies.values(
        "conversation_id", title=F("conversation__title")
    ).annotate(**sums)
    return {
        "overall": replies.aggregate(**sums),
        "per_day": list(per_day.order_by("-day")[:TOTALS_ROWS]),
        "per_user": list(per_user.order_by("-total", "user")[:TOTALS_ROWS]),
        "per_conversation": list(
            per_conversation.order_by("-total", "conversation_id")[:TOTALS_ROWS]
        ),
    }


@admin.register(Message)
class MessageAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Every message; for replies the usage ledger (model, tokens, latency), with
    totals over the current filter above the list."""

    list_display = (
        "id",
        "conversation",
        "owner",
        "role",
        "status",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "truncated",
        "task_",
        "created_at",
    )
    list_select_related = ("conversation__owner", "task")
    list_filter = ("role", "status", "model", "truncated", "created_at")
    search_fields = ("=id", "=conversation__id", "conversation__owner__username")
    date_hierarchy = "created_at"
    readonly_fields = [
        *(f.name for f in Message._meta.fields if f.name != "task"),
        "task_",
    ]
    inlines = (TaskRecordInline,)

    @admin.display(description="User", ordering="conversation__owner__username")
    def owner(self, obj: Message) -> str:
        return obj.conversation.owner.get_username()

    @admin.display(description="Task (timeline)")
    def task_(self, obj: Message) -> str:
        return task_link(obj)

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            response.context_data["usage"] = usage_totals(changelist.queryset)
        return response


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "subject",
        "recipient",
        "channel",
        "status",
        "attempts",
        "created_at",
        "sent_at",
        "read_at",
    )
    list_select_related = ("recipient",)
    list_filter = ("status", "channel", "created_at")
    search_fields = ("subject", "recipient__username", "recipient__email")
    date_hierarchy = "created_at"
    raw_id_fields = ("recipient",)
    readonly_fields = [f.name for f in Notification._meta.fields]
    actions = ("resend_selected",)
    inlines = (TaskRecordInline,)

    @admin.action(description="Resend selected notifications")
    def resend_selected(self, request, queryset) -> None:
        # A pending notification is still on its way: a second task would send it
        # twice.
        resent = skipped = 0
        for notification in queryset.select_related("recipient"):
            if notification.status == Notification.Status.PENDING:
                skipped += 1
                continue
            services.resend(notification)
            resent += 1
        level = messages.SUCCESS if resent else messages.WARNING
        self.message_user(
            request,
            f"Resent {resent} notification(s); skipped {skipped} still pending.",
            level,
        )
