from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers
from rest_framework.exceptions import NotFound

from claw.models import Conversation, Message, Notification
from knowledge.api.serializers import TextField
from knowledge.models import KnowledgeBase
from tasks_app.api.serializers import FieldsBuiltOnce, TaskRecordSerializer

MAX_CONTENT = 20_000  # characters of one message


# Numbers as the schema states them: DRF would read "5" as 5 and 1.5 as a pk of 1,
# and a client sending the wrong type should hear so (the schema fuzzing's
# negative cases check it). Text: knowledge.api's TextField, for the same reason.
class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class OwnedReferenceField(serializers.PrimaryKeyRelatedField):
    """An id of one of the caller's objects. One that does not exist or is someone
    else's is a 404 naming the field, as the object's own URL would answer (and
    as the knowledge API answers); it does not say which of the two."""

    def __init__(self, **kwargs):
        kwargs.setdefault("pk_field", StrictIntegerField(min_value=1))
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if exc.get_codes() != ["does_not_exist"]:
                raise
            # a list item's own field name is "": name the list
            name = self.field_name or self.parent.field_name
            label = self.queryset.model._meta.verbose_name
            raise NotFound({name: f"No such {label}: {data}."}) from None


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

    def to_internal_value(self, data):
        # DRF's many-field takes any iterable, so {} passed as an empty list
        if isinstance(data, dict) and not isinstance(
            data.get("knowledge_bases", []), list
        ):
            raise serializers.ValidationError(
                {"knowledge_bases": ["Expected a list of knowledge base ids."]}
            )
        return super().to_internal_value(data)

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
