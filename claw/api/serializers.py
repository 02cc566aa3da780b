from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from claw.models import Conversation, Message, Notification
from knowledge.services import KnowledgeBase
from tasks_app.api.fields import (
    OwnedReferenceField,
    StrictFloatField,
    StrictIntegerField,
    TextField,
)
from tasks_app.api.serializers import FieldsBuiltOnce, TaskRecordSerializer

MAX_CONTENT = 20_000  # characters of one message


class ConversationSerializer(serializers.ModelSerializer):
    """Knowledge bases must belong to the conversation's owner."""

    knowledge_bases = OwnedReferenceField(
        many=True, required=False, queryset=KnowledgeBase.objects.none()
    )
    title = TextField(visible=False, max_length=200, required=False)
    model = TextField(visible=False, max_length=200, required=False)
    temperature = StrictFloatField(
        min_value=0.0, max_value=2.0, required=False, allow_null=True
    )
    max_history = StrictIntegerField(min_value=1, max_value=100, required=False)
    system_prompt = TextField(visible=False, max_length=MAX_CONTENT, required=False)
    links = serializers.SerializerMethodField()

    class Meta:
        model = Conversation
        fields = [
            "id",
            "title",
            "knowledge_bases",
            "provider",
            "model",
            "temperature",
            "max_history",
            "system_prompt",
            "created_at",
            "updated_at",
            "links",
        ]
        read_only_fields = ["id", "created_at", "updated_at", "links"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        owner = getattr(self.instance, "owner", None) or getattr(request, "user", None)
        if owner is not None and owner.is_authenticated:
            field = self.fields["knowledge_bases"].child_relation
            field.queryset = KnowledgeBase.objects.filter(owner=owner)

    def get_links(self, obj: Conversation) -> dict:
        return {
            "self": reverse("conversation-detail", args=[obj.pk]),
            "messages": reverse("conversation-messages", args=[obj.pk]),
        }


class MessageSerializer(FieldsBuiltOnce, serializers.ModelSerializer):
    task_state = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation",
            "role",
            "content",
            "status",
            "truncated",
            "reply_to",
            "passages",
            "provider",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "tokens_estimated",
            "latency_ms",
            "error",
            "task",
            "task_state",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_task_state(self, obj: Message) -> str | None:
        return obj.task.state if obj.task_id else None


class PostMessageSerializer(serializers.Serializer):
    content = TextField(max_length=MAX_CONTENT)


class GenerateSerializer(serializers.Serializer):
    """The old API's body: the conversation (the caller's own) and the question."""

    conversation_id = OwnedReferenceField(queryset=Conversation.objects.none())
    user_message = TextField(max_length=MAX_CONTENT)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is None:
            return  # schema generation
        queryset = Conversation.objects.all()
        if not request.user.is_staff:
            queryset = queryset.filter(owner=request.user)
        self.fields["conversation_id"].queryset = queryset


class SubmissionSerializer(serializers.Serializer):
    user_message = MessageSerializer()
    assistant_message = MessageSerializer()
    task = TaskRecordSerializer()


class NotificationSerializer(serializers.ModelSerializer):
    unread = serializers.SerializerMethodField()

    class Meta:
        model = Notification
        fields = [
            "id",
            "channel",
            "subject",
            "body",
            "status",
            "unread",
            "created_at",
            "sent_at",
            "read_at",
        ]
        read_only_fields = fields

    def get_unread(self, obj: Notification) -> bool:
        return obj.read_at is None
