"""Conversations, their messages, AI-reply submissions and the notification inbox."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import Throttled, ValidationError
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from claw import conversations, services
from claw.api.serializers import (
    ConversationSerializer,
    GenerateSerializer,
    MessageSerializer,
    NotificationSerializer,
    PostMessageSerializer,
    SubmissionSerializer,
)
from claw.models import Conversation, Message, Notification
from tasks_app.api import errors, idempotency, params
from tasks_app.api.permissions import OwnedQuerysetMixin

SUBMITTED = {
    202: SubmissionSerializer,
    409: {"description": "The Idempotency-Key was used for a different request."},
}
AFTER = OpenApiParameter(
    "after",
    {"type": "integer", "minimum": 0},
    description="Only messages after this id",
)


def submit_reply(request, conversation: Conversation, content: str) -> Response:
    """Store the question and a pending reply, submit the reply task: 202.

    With an Idempotency-Key, a repeat of the request answers with the messages
    and task of the first one (see tasks_app.api.idempotency).
    """

    def replay(previous):
        try:
            return conversations.replay(previous, conversation, content)
        except conversations.DifferentRequest:
            raise idempotency.KeyReused() from None

    def post(key):
        try:
            return conversations.post_message(
                conversation, content, idempotency_key=key
            )
        except conversations.TooManyReplies as exc:
            raise Throttled(
                wait=settings.AI_IN_FLIGHT_RETRY_AFTER, detail=str(exc)
            ) from None

    submission = idempotency.submit_once(
        request,
        conversations.TASK_NAME,
        post,
        # keys are the conversation owner's, as its tasks are (post_message)
        owner=conversation.owner,
        replay=replay,
    )
    body = SubmissionSerializer(submission).data
    return Response(body, status=status.HTTP_202_ACCEPTED)


class SubmitThrottleMixin:
    """Submissions also count against API_THROTTLE_SUBMIT (scope "submit")."""

    throttle_scope = "submit"

    def get_throttles(self):
        throttles = super().get_throttles()
        if self.request.method == "POST" and self.is_submission():
            throttles.append(ScopedRateThrottle())
        return throttles

    def is_submission(self) -> bool:
        return True


class ConversationViewSet(
    SubmitThrottleMixin, OwnedQuerysetMixin, viewsets.ModelViewSet
):
    queryset = Conversation.objects.prefetch_related("knowledge_bases")
    serializer_class = ConversationSerializer
    http_method_names = ["get", "post", "put", "patch", "delete"]

    def is_submission(self) -> bool:
        return self.action == "messages"

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action == "messages":
            # Posting or listing messages needs the owner (whose task and key a
            # submission is), not the knowledge bases.
            return queryset.prefetch_related(None).select_related("owner")
        return queryset

    def perform_create(self, serializer):
        serializer.instance = conversations.create_conversation(
            self.request.user, **serializer.validated_data
        )

    def perform_update(self, serializer):
        conversations.update_conversation(
            serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance):
        conversations.delete_conversation(instance)

    @extend_schema(
        methods=["GET"],
        parameters=[AFTER],
        responses=MessageSerializer(many=True),
    )
    @extend_schema(
        methods=["POST"],
        request=PostMessageSerializer,
        parameters=[idempotency.PARAMETER],
        responses=SUBMITTED,
    )
    @action(detail=True, methods=["get", "post"])
    def messages(self, request, pk=None):
        conversation = self.get_object()
        if request.method == "POST":
            body = PostMessageSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            return submit_reply(request, conversation, body.validated_data["content"])
        messages = conversation.messages.select_related("task")
        after = params.id_param(
            request, "after", "Must be a message id (an integer).", maximum=None
        )
        if after is not None:
            messages = messages.filter(id__gt=after)
        page = self.paginate_queryset(messages.order_by("id"))
        return self.get_paginated_response(MessageSerializer(page, many=True).data)


class MessageViewSet(
    OwnedQuerysetMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """One message, for polling a reply while it is written (lists are per
    conversation: /conversations/{id}/messages/)."""

    queryset = Message.objects.select_related("task")
    serializer_class = MessageSerializer
    owner_field = "conversation__owner"


class GenerateView(SubmitThrottleMixin, APIView):
    """The old API's submission: POST /api/v1/tasks/ai/generate/."""

    @extend_schema(
        request=GenerateSerializer,
        parameters=[idempotency.PARAMETER],
        responses=SUBMITTED,
        operation_id="tasks_ai_generate",
    )
    def post(self, request):
        body = GenerateSerializer(data=request.data, context={"request": request})
        body.is_valid(raise_exception=True)
        data = body.validated_data
        return submit_reply(request, data["conversation_id"], data["user_message"])


class NotificationViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """The caller's own notifications, newest first; staff too see only theirs
    (an inbox, not an operations view: the admin lists everyone's)."""

    queryset = Notification.objects.all()
    serializer_class = NotificationSerializer

    def get_queryset(self):
        return super().get_queryset().filter(recipient=self.request.user)

    @extend_schema(
        parameters=[
            OpenApiParameter("unread", bool, description="Only unread (true) or read"),
            OpenApiParameter("channel", str, enum=list(Notification.Channel.values)),
        ]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def filter_queryset(self, queryset):
        if self.action != "list":
            return queryset
        unread = params.bool_param(self.request, "unread")
        if unread is not None:
            queryset = queryset.filter(read_at__isnull=unread)
        channel = self.request.query_params.get("channel")
        if channel is not None:
            if channel not in Notification.Channel.values:
                raise ValidationError(
                    {"channel": errors.one_of(Notification.Channel.values)}
                )
            queryset = queryset.filter(channel=channel)
        return queryset.order_by("-created_at", "-id")

    @extend_schema(request=None, responses=NotificationSerializer)
    @action(detail=True, methods=["post"])
    def read(self, request, pk=None):
        notification = services.mark_read(self.get_object())
        return Response(NotificationSerializer(notification).data)
