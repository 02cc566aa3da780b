from __future__ import annotations

from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks_app import dashboard, services, workers
from tasks_app.api.permissions import OwnedQuerysetMixin
from tasks_app.api.serializers import (
    PoolRestartSerializer,
    RetrySerializer,
    ShutdownSerializer,
    TaskDetailSerializer,
    TaskEventSerializer,
    TaskRecordSerializer,
)
from tasks_app.models import TaskRecord

CONFLICT = {409: {"description": "The task's state does not allow this."}}


def _datetime_param(request, name: str):
    value = request.query_params.get(name)
    if value is None:
        return None
    parsed = parse_datetime(value)
    if parsed is None:
        raise ValidationError({name: "Not an ISO 8601 date-time."})
    return parsed


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
            OpenApiParameter("name", str),
            OpenApiParameter("queue", str),
            OpenApiParameter("created_after", str, description="ISO 8601"),
            OpenApiParameter("created_before", str, description="ISO 8601"),
        ]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def filter_queryset(self, queryset):
        params = self.request.query_params
        state = params.get("state")
        if state is not None:
            if state not in TaskRecord.State.values:
                raise ValidationError(
                    {"state": f"Must be one of {TaskRecord.State.values}."}
                )
            queryset = queryset.filter(state=state)
        for field in ("name", "queue"):
            if params.get(field):
                queryset = queryset.filter(**{field: params[field]})
        after = _datetime_param(self.request, "created_after")
        before = _datetime_param(self.request, "created_before")
        if after:
            queryset = queryset.filter(created_at__gte=after)
        if before:
            queryset = queryset.filter(created_at__lt=before)
        return queryset.order_by("-id")

    @extend_schema(
        responses=TaskEventSerializer(many=True),
        parameters=[
            OpenApiParameter("after", int, description="Only events after this id")
        ],
    )
    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        record = self.get_object()
        events = record.events.all()
        after = request.query_params.get("after")
        if after is not None:
            if not after.isdigit():
                raise ValidationError({"after": "Must be an event id (an integer)."})
            events = events.filter(id__gt=int(after))
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
        request=RetrySerializer, responses={202: TaskRecordSerializer, **CONFLICT}
    )
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        record = self.get_object()
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
        parameters=[OpenApiParameter("hours", int, description="Window, 1-720")]
    )
    @action(detail=False, methods=["get"], permission_classes=[IsAdminUser])
    def stats(self, request):
        hours = request.query_params.get("hours", "24")
        if not hours.isdigit() or not 1 <= int(hours) <= 720:
            raise ValidationError({"hours": "Must be an integer from 1 to 720."})
        start = dashboard.since(int(hours))
        by_state = dashboard.counts_by_state(start)
        try:
            queues = workers.queue_lengths()
        except Exception as exc:  # the broker being down must not break stats
            queues = {"error": str(exc)}
        return Response(
            {
                "window_hours": int(hours),
                "by_state": by_state,
                "by_name": dashboard.counts_by_name(start),
                "throughput_per_hour": dashboard.hourly(start),
                "failure_rate": dashboard.failure_rate(by_state),
                "queues": queues,
            }
        )


class WorkersView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses={200: dict})
    def get(self, request):
        return Response([vars(info) for info in workers.cluster()])


class PoolRestartView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=PoolRestartSerializer, responses={202: dict})
    def post(self, request):
        body = PoolRestartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        replies = workers.pool_restart(body.validated_data.get("destination") or None)
        return Response({"replies": replies}, status=status.HTTP_202_ACCEPTED)


class ShutdownView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=ShutdownSerializer, responses={202: dict})
    def post(self, request):
        body = ShutdownSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        workers.shutdown([body.validated_data["worker"]])
        return Response({"shutdown": body.validated_data["worker"]}, status=202)
