from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from claw.models import Conversation, Message, Notification
from knowledge.models import KnowledgeBase
from tasks_app.api.serializers import TaskRecordSerializer

MAX_CONTENT = 20_000  # characters of one message


def strict_id() -> serializers.IntegerField:
    # 1.5 or "1.5" is refused rather than read as 1.
    return serializers.IntegerField(min_value=1)


class ConversationSerializer(serializers.ModelSerializer):
    """Knowledge bases must belong to the conversation's owner: any other id is a
    400 naming the field (it does not say whether the id exists)."""

    knowledge_bases = serializers.PrimaryKeyRelatedField(
        many=True,
        required=False,
        queryset=KnowledgeBase.objects.none(),
        pk_field=strict_id(),
    )
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
        extra_kwargs = {
            "temperature": {"min_value": 0.0, "max_value": 2.0},
            "max_history": {"min_value": 1, "max_value": 100},
            "system_prompt": {"max_length": MAX_CONTENT},
        }

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


class MessageSerializer(serializers.ModelSerializer):
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
    content = serializers.CharField(max_length=MAX_CONTENT)


class GenerateSerializer(serializers.Serializer):
    """The old API's body: the conversation (the caller's own) and the question."""

    conversation_id = serializers.PrimaryKeyRelatedField(
        queryset=Conversation.objects.none(), pk_field=strict_id()
    )
    user_message = serializers.CharField(max_length=MAX_CONTENT)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        user = self.context["request"].user
        queryset = Conversation.objects.all()
        if not user.is_staff:
            queryset = queryset.filter(owner=user)
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
