from __future__ import annotations

import copy
import json

from django.urls import reverse
from django_celery_results.models import TaskResult
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tasks_app.models import TaskEvent, TaskRecord


class FieldsBuiltOnce:
    """For a read-only ModelSerializer: build its fields once per class.

    ModelSerializer introspects the model for every instance it makes, and a
    response builds one per nested object: for a message submission (two
    messages and a task) that was a quarter of the request's CPU. Fields that
    depend only on the class can be built once and copied, as DRF copies its
    declared fields; a serializer whose fields depend on the request must not
    use this.
    """

    _built_fields: dict[type, dict] = {}

    def get_fields(self):
        cls = type(self)
        if cls not in FieldsBuiltOnce._built_fields:
            FieldsBuiltOnce._built_fields[cls] = super().get_fields()
        return copy.deepcopy(FieldsBuiltOnce._built_fields[cls])


class TaskRecordSerializer(FieldsBuiltOnce, serializers.ModelSerializer):
    """A task as clients see it; `state` uses Celery's names."""

    progress = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()

    class Meta:
        model = TaskRecord
        fields = [
            "id",
            "name",
            "state",
            "queue",
            "priority",
            "progress",
            "attempts",
            "celery_id",
            "worker",
            "error",
            "created_at",
            "started_at",
            "finished_at",
            "eta",
            "cancel_requested",
            "parent",
            "links",
        ]
        read_only_fields = fields

    def get_progress(self, obj: TaskRecord) -> dict:
        return {
            "current": obj.progress_current,
            "total": obj.progress_total,
            "message": obj.progress_message,
            "percent": obj.progress_percent,
        }

    def get_links(self, obj: TaskRecord) -> dict:
        return {
            "self": reverse("taskrecord-detail", args=[obj.pk]),
            "events": reverse("taskrecord-events", args=[obj.pk]),
        }


class TaskDetailSerializer(TaskRecordSerializer):
    result = serializers.SerializerMethodField()
    args = serializers.JSONField(read_only=True)
    kwargs = serializers.JSONField(read_only=True)

    class Meta(TaskRecordSerializer.Meta):
        fields = [
            *TaskRecordSerializer.Meta.fields,
            "args",
            "kwargs",
            "result",
            "traceback",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.ANY)
    def get_result(self, obj: TaskRecord):
        stored = TaskResult.objects.filter(
            task_id=obj.celery_id, status="SUCCESS"
        ).first()
        if stored is None or stored.result is None:
            return None
        try:
            return json.loads(stored.result)
        except ValueError:
            return stored.result


class TaskEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = TaskEvent
        fields = ["id", "kind", "at", "attempt", "celery_id", "worker", "data"]
        read_only_fields = fields


class RetrySerializer(serializers.Serializer):
    """Without a body the retry reruns the stored arguments; only staff may
    replace them (anyone else sending args or kwargs gets a 403 naming them)."""

    args = serializers.ListField(
        required=False, help_text="Staff only: replaces the stored args."
    )
    kwargs = serializers.DictField(
        required=False, help_text="Staff only: replaces the stored kwargs."
    )


WORKER_NAME = r"^[A-Za-z0-9_.:@+-]{1,255}$"  # Celery node names, e.g. ai@host-1


class WorkerNameField(serializers.RegexField):
    """A worker name that must arrive as a string (numbers are refused, not cast)."""

    def __init__(self, **kwargs):
        super().__init__(WORKER_NAME, **kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field({"type": "boolean", "enum": [True]})
class ConfirmField(serializers.BooleanField):
    """A flag the client must send as JSON true; the schema says so."""

    def to_internal_value(self, data):
        if data is not True:
            raise serializers.ValidationError("Must be true.")
        return True


class ShutdownSerializer(serializers.Serializer):
    worker = WorkerNameField(help_text="A worker name, name@host.")
    confirm = ConfirmField(help_text="Must be true.")

    def validate_confirm(self, value: bool) -> bool:
        if not value:
            raise serializers.ValidationError("Must be true to shut a worker down.")
        return value


class PoolRestartSerializer(serializers.Serializer):
    destination = serializers.ListField(child=WorkerNameField(), required=False)
