"""Writing jobs: POST /jobs/outline, POST /jobs/document, GET /jobs/{job_id}/,
POST /jobs/{job_id}/cancel/, GET /jobs/."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from tasks_app.api import idempotency, params
from tasks_app.api.fields import INT64_MAX
from tasks_app.api.permissions import OwnedQuerysetMixin
from writing import jobs
from writing.api.serializers import (
    DocumentRequestSerializer,
    JobDetailSerializer,
    JobSerializer,
    OutlineRequestSerializer,
)
from writing.models import WritingJob

SUBMITTED = {
    202: JobDetailSerializer,
    200: JobDetailSerializer,
    409: {
        "description": "The job_id or Idempotency-Key was used for a different "
        "request, or the outline job has not succeeded."
    },
}
JOB_ID = OpenApiParameter(
    "job_id",
    {"type": "string", "pattern": jobs.JOB_ID_PATTERN, "maxLength": 100},
    OpenApiParameter.PATH,
)
OWNER = OpenApiParameter(
    "owner",
    {"type": "integer", "minimum": 1, "maximum": INT64_MAX},
    description="Staff: the owner's user id, when several users have a job with "
    "this job_id (your own comes first).",
)
FILTERS = [
    OpenApiParameter("kind", str, enum=list(WritingJob.Kind.values)),
    OpenApiParameter("state", str, enum=list(WritingJob.State.values)),
]


class JobViewSet(
    OwnedQuerysetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Your writing jobs (staff: everyone's), looked up by their job_id."""

    queryset = WritingJob.objects.select_related("task", "outline_job")
    serializer_class = JobSerializer
    lookup_field = "job_id"
    lookup_value_regex = jobs.URL_JOB_ID
    throttle_scope = "submit"  # used by the submissions only (SUBMIT)

    def get_serializer_class(self):
        if self.action == "list":
            return JobSerializer
        return JobDetailSerializer

    @extend_schema(parameters=FILTERS)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def filter_queryset(self, queryset):
        kind = params.choice_param(self.request, "kind", WritingJob.Kind.values)
        state = params.choice_param(self.request, "state", WritingJob.State.values)
        if kind:
            queryset = queryset.filter(kind=kind)
        if state:
            queryset = queryset.filter(state=state)
        return queryset.order_by("-id")

    def get_object(self) -> WritingJob:
        """The job with this job_id. job_ids are unique per owner only: staff get
        their own first, otherwise the only one, or name the owner."""
        user = self.request.user
        found = self.get_queryset().filter(job_id=self.kwargs["job_id"])
        owner = (
            params.id_param(
                self.request,
                "owner",
                "Must be a user id (a positive integer).",
                minimum=1,
            )
            if user.is_staff
            else None
        )
        if owner is not None:
            found = found.filter(owner_id=owner)
        elif user.is_staff and found.filter(owner=user).exists():
            found = found.filter(owner=user)
        matches = list(found[:2])
        if not matches:
            raise NotFound()
        if len(matches) > 1:
            raise ValidationError(
                {"owner": "Several users have a job with this job_id: give ?owner="}
            )
        self.check_object_permissions(self.request, matches[0])
        return matches[0]

    @extend_schema(parameters=[JOB_ID, OWNER])
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        request=None,
        parameters=[JOB_ID, OWNER],
        responses={
            202: JobDetailSerializer,
            409: {"description": "The job has already ended."},
        },
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, job_id=None):
        try:
            job = jobs.cancel_job(self.get_object())
        except jobs.JobFinished as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(self._detail(job), status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=None,
        parameters=[JOB_ID, OWNER],
        responses={
            202: JobDetailSerializer,
            409: {"description": "Only a failed job can be retried; says why not."},
        },
    )
    @action(detail=True, methods=["post"], **idempotency.SUBMIT)
    def retry(self, request, job_id=None):
        """Rerun a failed job from where it failed: its outline, or the sections
        not written (then the merge)."""
        try:
            job = jobs.retry_job(self.get_object())
        except jobs.NotRetryable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(self._detail(job), status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=OutlineRequestSerializer,
        parameters=[idempotency.PARAMETER],
        responses=SUBMITTED,
        operation_id="jobs_outline_create",
    )
    @action(detail=False, methods=["post"], url_path="outline", **idempotency.SUBMIT)
    def outline(self, request):
        body = OutlineRequestSerializer(data=request.data, context={"request": request})
        body.is_valid(raise_exception=True)
        data = body.validated_data
        return self._submit(
            request,
            jobs.OUTLINE_TASK,
            lambda key: jobs.start_outline_job(
                request.user,
                task_prompt=data["task_prompt"],
                knowledge_bases=data.get("knowledge_base_ids", []),
                documents=data.get("document_ids", []),
                context_files=data.get("context_files"),
                job_id=data.get("job_id"),
                idempotency_key=key,
            ),
        )

    @extend_schema(
        request=DocumentRequestSerializer,
        parameters=[idempotency.PARAMETER],
        responses=SUBMITTED,
        operation_id="jobs_document_create",
    )
    @action(detail=False, methods=["post"], url_path="document", **idempotency.SUBMIT)
    def document(self, request):
        body = DocumentRequestSerializer(
            data=request.data, context={"request": request}
        )
        body.is_valid(raise_exception=True)
        data = body.validated_data
        outline = data["outline"]
        outline_job = None
        if isinstance(outline, str):
            outline_job = self._outline_job(request.user, outline)
            outline = None
        return self._submit(
            request,
            jobs.DOCUMENT_TASK,
            lambda key: jobs.start_document_job(
                request.user,
                outline=outline,
                outline_job=outline_job,
                knowledge_base=data.get("knowledge_base_id"),
                allow_missing_sections=data.get("allow_missing_sections"),
                job_id=data.get("job_id"),
                idempotency_key=key,
            ),
        )

    def _outline_job(self, user, job_id: str) -> WritingJob:
        try:
            return jobs.outline_of(user, job_id)
        except WritingJob.DoesNotExist:
            raise NotFound({"outline": f"No such outline job: {job_id!r}."}) from None
        except jobs.JobConflict as exc:
            raise Conflict(exc) from None

    def _submit(self, request, task_name: str, start) -> Response:
        """202 with the new job; 200 with the job that the same job_id or
        Idempotency-Key already started (tasks_app.api.idempotency's claim
        serialises requests with one key)."""
        try:
            # a repeated key finds its job through start() (jobs._start)
            started = idempotency.submit_once(
                request,
                task_name,
                start,
                replay=lambda previous: start(previous.idempotency_key),
            )
        except jobs.JobConflict as exc:
            raise Conflict(exc) from None
        except jobs.NotOwned as exc:
            field, _, message = str(exc).partition(": ")
            raise NotFound({field: message}) from None
        except jobs.InvalidInput as exc:
            raise idempotency.invalid(exc) from None
        code = status.HTTP_202_ACCEPTED if started.created else status.HTTP_200_OK
        return Response(self._detail(started.job), status=code)

    def _detail(self, job: WritingJob) -> dict:
        return JobDetailSerializer(job, context=self.get_serializer_context()).data


class Conflict(ValidationError):
    """409 with the field the message names: {"job_id": [...]}."""

    status_code = status.HTTP_409_CONFLICT

    def __init__(self, exc: Exception):
        field, _, message = str(exc).partition(": ")
        super().__init__({field: message} if message else str(exc))
