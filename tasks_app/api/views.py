from __future__ import annotations

import re

from django.conf import settings
from django.db.models import Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks_app import dashboard, services, workers
from tasks_app.api import params
from tasks_app.api.permissions import CanControlWorkers, OwnedQuerysetMixin
from tasks_app.api.serializers import (
    PoolRestartSerializer,
    RetrySerializer,
    ShutdownSerializer,
    TaskDetailSerializer,
    TaskEventSerializer,
    TaskRecordSerializer,
)
from tasks_app.models import TaskEvent, TaskRecord

STATS_SCHEMA = inline_serializer(
    "TaskStats",
    {
        "window_hours": serializers.IntegerField(),
        "by_state": serializers.DictField(
            child=serializers.IntegerField(),
            help_text="How many times each state was entered in the window "
            "(whole minutes up to 2 h, whole hours beyond).",
        ),
        "by_name": serializers.DictField(
            child=serializers.DictField(),
            help_text="Per task type: total (finished), failed, succeeded, retried, "
            "revoked, failure_rate, runs, run_p50, run_p95 and wait_p95 (seconds, "
            "null without data).",
        ),
        "by_queue": serializers.DictField(
            child=serializers.DictField(child=serializers.IntegerField()),
            help_text="Per queue: sent and finished in the window.",
        ),
        "throughput_per_hour": serializers.ListField(child=serializers.DictField()),
        "failure_rate": serializers.FloatField(),
        "queues": serializers.DictField(),
    },
)


class StatsQuerySerializer(serializers.Serializer):
    hours = serializers.IntegerField(
        min_value=1, max_value=720, required=False, help_text="Window in hours"
    )


class WorkerSerializer(serializers.Serializer):
    name = serializers.CharField()
    alive = serializers.BooleanField()
    pool = serializers.CharField()
    concurrency = serializers.IntegerField(allow_null=True)
    processed = serializers.IntegerField()
    active = serializers.ListField(child=serializers.DictField())
    reserved = serializers.ListField(child=serializers.DictField())
    scheduled = serializers.ListField(child=serializers.DictField())
    queues = serializers.ListField(child=serializers.CharField())
    controls = serializers.ListField(
        child=serializers.ChoiceField(["restart", "grow", "shrink", "shutdown"]),
        help_text="What this worker's pool supports.",
    )


TASK_NAME = r"^[A-Za-z0-9_.:-]{1,200}$"
CONFLICT = {409: {"description": "The task's state does not allow this."}}


STAFF_EDITS_ARGUMENTS = (
    "Only staff may change a task's arguments; retry without them to rerun "
    "the stored ones."
)


def edited_arguments(request) -> list[str]:
    """The argument fields (args, kwargs) a retry request sends, in that order."""
    data = request.data
    if not hasattr(data, "keys"):
        return []
    return [field for field in ("args", "kwargs") if field in data]


def with_celery_id(queryset, celery_id: str):
    """Records whose current or any earlier attempt had this Celery id.

    A retry gives the record a new id, but every attempt's "queued" event keeps
    its own (indexed), so a client holding an old attempt's id still finds it.
    """
    earlier = TaskEvent.objects.filter(
        kind=TaskEvent.Kind.QUEUED, celery_id=celery_id
    ).values("record_id")
    return queryset.filter(Q(celery_id=celery_id) | Q(pk__in=earlier))


class TaskRecordViewSet(
    OwnedQuerysetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    queryset = TaskRecord.objects.all()
    serializer_class = TaskRecordSerializer

    def get_serializer_class(self):
        return (
            TaskDetailSerializer
            if self.action == "retrieve"
            else super().get_serializer_class()
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("state", str, enum=list(TaskRecord.State.values)),
            OpenApiParameter("name", str, pattern=TASK_NAME),
            OpenApiParameter("queue", str, enum=list(settings.CLAW_QUEUES)),
            OpenApiParameter("created_after", OpenApiTypes.DATETIME),
            OpenApiParameter("created_before", OpenApiTypes.DATETIME),
            OpenApiParameter(
                "celery_id",
                str,
                description="The record with this Celery id (of any attempt)",
            ),
        ]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def get_object(self):
        # {id} is the record id or a Celery id of any of its attempts, as the
        # old API's task_id was.
        key = self.kwargs["pk"]
        if not key.isdigit():
            found = with_celery_id(self.get_queryset(), key).values("pk").first()
            self.kwargs["pk"] = str(found["pk"]) if found else "0"
        return super().get_object()

    def filter_queryset(self, queryset):
        query = self.request.query_params
        state = params.choice_param(self.request, "state", TaskRecord.State.values)
        if state:
            queryset = queryset.filter(state=state)
        if "name" in query:
            if not re.fullmatch(TASK_NAME, query["name"]):
                raise ValidationError({"name": "Not a task name."})
            queryset = queryset.filter(name=query["name"])
        queue = params.choice_param(self.request, "queue", settings.CLAW_QUEUES)
        if queue is not None:
            queryset = queryset.filter(queue=queue)
        if "celery_id" in query:
            queryset = with_celery_id(queryset, query["celery_id"])
        after = params.datetime_param(self.request, "created_after")
        before = params.datetime_param(self.request, "created_before")
        if after:
            queryset = queryset.filter(created_at__gte=after)
        if before:
            queryset = queryset.filter(created_at__lt=before)
        return queryset.order_by("-id")

    @extend_schema(
        responses=TaskEventSerializer(many=True),
        parameters=[
            OpenApiParameter(
                "after",
                {"type": "integer", "minimum": 0},
                description="Only events after this id",
            )
        ],
    )
    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        record = self.get_object()
        events = record.events.all()
        after = params.id_param(
            request, "after", "Must be an event id (an integer).", maximum=None
        )
        if after:
            events = events.filter(id__gt=after)
        page = self.paginate_queryset(events)
        return self.get_paginated_response(TaskEventSerializer(page, many=True).data)

    @extend_schema(request=None, responses={202: TaskRecordSerializer, **CONFLICT})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        try:
            record = services.cancel(self.get_object())
        except services.InvalidTransition as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(
            TaskRecordSerializer(record).data, status=status.HTTP_202_ACCEPTED
        )

    @extend_schema(
        request=RetrySerializer,
        responses={
            202: TaskRecordSerializer,
            403: OpenApiResponse(
                OpenApiTypes.OBJECT,
                description="args or kwargs sent by a user who is not staff; the "
                "body names them.",
            ),
            **CONFLICT,
        },
    )
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        record = self.get_object()
        if record.state not in TaskRecord.RETRYABLE_STATES:
            # Before the body: a record that cannot be retried is a 409 whatever
            # arguments come with it.
            return Response(
                {"detail": f"Task #{record.pk} is {record.state}, not retryable"},
                status=status.HTTP_409_CONFLICT,
            )
        edited = edited_arguments(request)
        if edited and not request.user.is_staff:
            # Tasks take raw ids: new arguments could name another user's
            # objects. Editing them stays staff's (the admin's edit-and-retry).
            raise PermissionDenied({field: [STAFF_EDITS_ARGUMENTS] for field in edited})
        body = RetrySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            record = services.retry(
                record,
                args=body.validated_data.get("args"),
                kwargs=body.validated_data.get("kwargs"),
            )
        except services.InvalidTransition as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(
            TaskRecordSerializer(record).data, status=status.HTTP_202_ACCEPTED
        )

    @extend_schema(
        parameters=[StatsQuerySerializer],
        responses={200: STATS_SCHEMA},
    )
    @action(detail=False, methods=["get"], permission_classes=[IsAdminUser])
    def stats(self, request):
        given = request.query_params.getlist("hours")
        hours = given[0] if len(given) == 1 else ("24" if not given else "")
        if not hours.isdigit() or not 1 <= int(hours) <= 720:
            raise ValidationError({"hours": "Must be an integer from 1 to 720."})
        stats = dashboard.summary(int(hours))  # from the rollups, see dashboard
        by_state = stats["by_state"]
        try:
            queues = workers.queue_lengths()
        except Exception as exc:  # the broker being down must not break stats
            queues = {"error": str(exc)}
        return Response(
            {
                "window_hours": int(hours),
                "by_state": by_state,
                "by_name": stats["by_name"],
                "by_queue": stats["by_queue"],
                "throughput_per_hour": stats["hourly"],
                "failure_rate": dashboard.failure_rate(by_state),
                "queues": queues,
            }
        )


class WorkersView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses={200: WorkerSerializer(many=True)})
    def get(self, request):
        cluster = workers.cluster(timeout=workers.QUICK_TIMEOUT)
        return Response([vars(info) for info in cluster])


WORKER_REPLIES = inline_serializer(
    "WorkerReplies",
    {
        "replies": serializers.DictField(
            child=serializers.DictField(),
            help_text='Each worker\'s own answer: {"ok": ...} or {"error": ...}.',
        )
    },
)
CONTROL_RESPONSES = {
    202: WORKER_REPLIES,
    404: {"description": "A named worker does not answer (or none does)."},
    409: {"description": "No worker carried the control out; see replies."},
}


def control_response(field: str, send) -> Response:
    """202 with each worker's answer; 404 naming the field for workers that do
    not answer; 409 when every worker refused (e.g. a threads pool)."""
    try:
        replies = send()
    except workers.UnknownWorker as exc:
        message = str(exc) if exc.names else "No worker answered."
        raise NotFound({field: [message]}) from None
    if not any("ok" in answer for answer in replies.values()):
        return Response(
            {"detail": "No worker carried it out.", "replies": replies},
            status=status.HTTP_409_CONFLICT,
        )
    return Response({"replies": replies}, status=status.HTTP_202_ACCEPTED)


class PoolRestartView(APIView):
    permission_classes = [CanControlWorkers]

    @extend_schema(request=PoolRestartSerializer, responses=CONTROL_RESPONSES)
    def post(self, request):
        body = PoolRestartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        destination = body.validated_data.get("destination") or None
        return control_response(
            "destination", lambda: workers.pool_restart(destination)
        )


class ShutdownView(APIView):
    permission_classes = [CanControlWorkers]

    @extend_schema(request=ShutdownSerializer, responses=CONTROL_RESPONSES)
    def post(self, request):
        body = ShutdownSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        worker = body.validated_data["worker"]
        return control_response("worker", lambda: workers.shutdown([worker]))
