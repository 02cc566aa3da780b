"""Conversations, AI replies and notifications."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Notification(models.Model):
    class Channel(models.TextChoices):
        EMAIL = "email", "Email"
        PUSH = "push", "Push"
        SMS = "sms", "SMS"
        SYSTEM = "system", "In-app"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications"
    )
    channel = models.CharField(max_length=10, choices=Channel.choices)
    subject = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["recipient", "channel", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.get_channel_display()} to {self.recipient}: {self.subject}"


class Conversation(models.Model):
    """A chat with an AI model that may draw on some of its owner's knowledge bases.

    Blank model settings mean the server's defaults (LLM_PROVIDER, LLM_MODEL).
    """

    class Provider(models.TextChoices):
        EXTRACTIVE = "extractive", "Extractive (offline, quotes passages)"
        OPENAI = "openai", "OpenAI-compatible endpoint"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="conversations",
    )
    title = models.CharField(max_length=200, blank=True)
    knowledge_bases = models.ManyToManyField(
        "knowledge.KnowledgeBase",
        blank=True,
        related_name="conversations",
        help_text="Replies quote or cite the best passages of these knowledge bases.",
    )
    provider = models.CharField(
        max_length=20,
        choices=Provider.choices,
        blank=True,
        help_text="Blank: the server's LLM_PROVIDER.",
    )
    model = models.CharField(
        max_length=200, blank=True, help_text="Blank: the server's LLM_MODEL."
    )
    temperature = models.FloatField(
        null=True, blank=True, help_text="0 to 2; blank: the provider's default."
    )
    max_history = models.PositiveSmallIntegerField(
        default=10,
        help_text="How many recent messages (the new one included) go into a prompt.",
    )
    system_prompt = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["owner", "-id"], name="conversation_owner_id")]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    """One message of a conversation. Assistant messages double as the usage ledger:
    model, tokens and latency of the reply that produced them."""

    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"
        SYSTEM = "system", "System"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        GENERATING = "generating", "Generating"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.DONE
    )
    reply_to = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="replies",
        help_text="The user message an assistant message answers.",
    )
    truncated = models.BooleanField(
        default=False,
        help_text="The reply stopped early (time limit, deadline, cancel or error); "
        "the content is what had arrived.",
    )
    passages = models.JSONField(
        default=list,
        blank=True,
        help_text="The knowledge-base passages the reply was given, numbered as cited.",
    )
    provider = models.CharField(max_length=20, blank=True)
    model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(
        default=False,
        help_text="The provider reported no usage; tokens are estimated from length.",
    )
    latency_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="From the start of generation to the end."
    )
    error = models.TextField(blank=True)
    task = models.ForeignKey(
        "tasks_app.TaskRecord",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The task that produced this reply.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    ACTIVE_STATUSES = (Status.PENDING, Status.GENERATING)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["conversation", "id"], name="message_conversation_id"),
            # The usage admin filters assistant messages by day and model.
            models.Index(fields=["role", "created_at"], name="message_role_created"),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk} in conversation {self.conversation_id}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class LlmRollup(models.Model):
    """All-time usage of the finished AI replies of one model, added up by the
    rollup fold (claw.metrics.fold_replies) so /metrics never reads the messages.

    buckets: reply times per histogram slot of tasks_app.rollups.BOUNDS (not
    cumulative; the last slot is +Inf); timed: the replies with a latency.
    """

    model = models.CharField(max_length=200, unique=True)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    timed = models.BigIntegerField(default=0)
    latency_ms = models.BigIntegerField(default=0)
    buckets = models.JSONField(default=list, blank=True)

    def __str__(self) -> str:
        return f"usage of {self.model}"
