"""Writing jobs in the API: requests (outline, document) and the job as clients
poll it."""

from __future__ import annotations

from django.conf import settings
from django.urls import reverse
from drf_spectacular.extensions import (
    OpenApiSerializerFieldExtension,
)
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from knowledge.services import Document, KnowledgeBase
from tasks_app.api.fields import (
    INT64_MAX,
    OwnedReferenceField,
    StrictIntegerField,
    TextField,
)
from tasks_app.api.serializers import TaskRecordSerializer
from writing import jobs, outlines
from writing.models import WritingJob, WritingSection

PROMPT_MAX = 4000
CONTEXT_FILES_MAX = 50
JOB_ID_HELP = (
    "Your id for the job (unique among your jobs; default: a new one). Posting the "
    "same job_id again answers with that job (200) instead of starting another."
)


class JobIdField(serializers.RegexField):
    """A job_id as the schema states it: a string (numbers are refused, not
    cast) matching jobs.JOB_ID_PATTERN, which leaves out the reserved names."""

    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", JOB_ID_HELP)
        super().__init__(jobs.JOB_ID_PATTERN, max_length=100, **kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            return jobs.check_job_id(super().to_internal_value(data))
        except jobs.InvalidInput as exc:
            raise serializers.ValidationError(str(exc).partition(": ")[2]) from None


@extend_schema_field({"type": "boolean"})
class StrictBooleanField(serializers.BooleanField):
    """JSON true or false only (DRF would take "yes", "on" or 1)."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


# --- outlines --------------------------------------------------------------------


class PassageSerializer(serializers.Serializer):
    """A supporting passage: a chunk of one of your knowledge bases. Requests give
    chunk_id; the rest is filled in from the chunk."""

    chunk_id = StrictIntegerField(min_value=1, max_value=INT64_MAX, allow_null=False)
    document_id = serializers.IntegerField(read_only=True)
    document_title = serializers.CharField(read_only=True)
    knowledge_base_id = serializers.IntegerField(read_only=True)
    position = serializers.IntegerField(read_only=True)
    text = serializers.CharField(read_only=True)
    score = serializers.FloatField(read_only=True, allow_null=True)


class SectionSerializer(serializers.Serializer):
    heading = TextField(max_length=outlines.HEADING_MAX)
    key_points = serializers.ListField(
        child=TextField(max_length=outlines.KEY_POINT_MAX),
        max_length=outlines.KEY_POINTS_MAX,
        default=list,
    )
    passages = serializers.ListField(
        child=PassageSerializer(), max_length=outlines.PASSAGES_MAX, default=list
    )


class OutlineSerializer(serializers.Serializer):
    title = TextField(max_length=outlines.TITLE_MAX)
    sections = serializers.ListField(
        child=SectionSerializer(),
        min_length=1,
        max_length=settings.JOBS_MAX_SECTIONS,
        help_text="At most JOBS_MAX_SECTIONS.",
    )


class OutlineOrJobField(serializers.Field):
    """An outline given inline, or the job_id of one of your outline jobs."""

    def to_internal_value(self, data):
        if isinstance(data, str):
            return JobIdField().run_validation(data)
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                "Must be an outline object or the job_id of an outline job."
            )
        outline = OutlineSerializer(data=data)
        outline.is_valid(raise_exception=True)
        return outline.validated_data

    def to_representation(self, value):
        return value


class OutlineOrJobFieldExtension(OpenApiSerializerFieldExtension):
    target_class = OutlineOrJobField

    def map_serializer_field(self, auto_schema, direction):
        component = auto_schema.resolve_serializer(OutlineSerializer, direction)
        job_id = {
            "type": "string",
            "pattern": jobs.JOB_ID_PATTERN,
            "maxLength": 100,
            "description": "The job_id of one of your outline jobs.",
        }
        return {"oneOf": [component.ref, job_id]}


# --- requests --------------------------------------------------------------------


class OutlineRequestSerializer(serializers.Serializer):
    """Knowledge bases and documents must be yours. Sources are optional (as in
    the old API): with none, the job draws on all your ready knowledge bases."""

    job_id = JobIdField(required=False)
    task_prompt = TextField(
        max_length=PROMPT_MAX, help_text="What the document should be about."
    )
    knowledge_base_ids = serializers.ListField(
        child=OwnedReferenceField(queryset=KnowledgeBase.objects.none()),
        required=False,
        max_length=50,
        help_text="Search these knowledge bases (yours).",
    )
    document_ids = serializers.ListField(
        child=OwnedReferenceField(queryset=Document.objects.none()),
        required=False,
        max_length=200,
        help_text="And/or only these documents of your knowledge bases.",
    )
    context_files = serializers.DictField(
        child=TextField(),
        required=False,
        help_text="The old API's inline sources, {file name: text} (.md and .html "
        "by their suffix): kept as documents of your knowledge base 'Writing job "
        "context' and searched with the rest.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is None:
            return  # schema generation
        own = self.fields["knowledge_base_ids"].child
        own.queryset = KnowledgeBase.objects.filter(owner=request.user)
        documents = self.fields["document_ids"].child
        documents.queryset = Document.objects.filter(knowledge_base__owner=request.user)

    def validate_context_files(self, files: dict[str, str]) -> dict[str, str]:
        # The names become document titles: NUL dropped, as TextField drops it
        # from the texts (PostgreSQL cannot store it).
        files = {name.replace("\x00", ""): text for name, text in files.items()}
        if len(files) > CONTEXT_FILES_MAX:
            raise serializers.ValidationError(f"At most {CONTEXT_FILES_MAX} files.")
        size = sum(len(text.encode()) for text in files.values())
        if size > settings.KNOWLEDGE_MAX_UPLOAD_BYTES:
            raise serializers.ValidationError(
                f"Larger than the limit of {settings.KNOWLEDGE_MAX_UPLOAD_BYTES} "
                "bytes in all."
            )
        return files


class DocumentRequestSerializer(serializers.Serializer):
    job_id = JobIdField(required=False)
    outline = OutlineOrJobField(
        help_text="An outline ({title, sections: [{heading, key_points, passages: "
        "[{chunk_id}]}]}, chunks of your knowledge bases), or the job_id of your "
        "outline job, which must have succeeded (409 otherwise)."
    )
    knowledge_base_id = OwnedReferenceField(
        queryset=KnowledgeBase.objects.none(),
        required=False,
        allow_null=True,
        help_text="Add the written document to this knowledge base (yours).",
    )
    allow_missing_sections = StrictBooleanField(
        required=False,
        help_text="true: a failed section is marked missing instead of failing the "
        "job. Default: JOBS_ALLOW_MISSING_SECTIONS.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            field = self.fields["knowledge_base_id"]
            field.queryset = KnowledgeBase.objects.filter(owner=request.user)


# --- the job -------------------------------------------------------------------------


class ReferenceSerializer(serializers.Serializer):
    n = serializers.IntegerField(help_text="The number cited as [n] in the text.")
    chunk_id = serializers.IntegerField(
        allow_null=True, help_text="null when the chunk is gone since."
    )
    document_id = serializers.IntegerField()
    document_title = serializers.CharField()
    knowledge_base_id = serializers.IntegerField()
    position = serializers.IntegerField()
    text = serializers.CharField()
    score = serializers.FloatField(allow_null=True)


class DocumentResultSerializer(serializers.Serializer):
    title = serializers.CharField()
    content = serializers.CharField(help_text="Markdown, with a References section.")
    references = ReferenceSerializer(many=True)
    missing_sections = serializers.ListField(
        child=serializers.IntegerField(), help_text="Positions of missing sections."
    )
    document_id = serializers.IntegerField(
        allow_null=True, help_text="The document added to knowledge_base_id."
    )
    knowledge_base_id = serializers.IntegerField(allow_null=True)


class SectionStateSerializer(serializers.Serializer):
    position = serializers.IntegerField()
    heading = serializers.CharField()
    status = serializers.ChoiceField(choices=WritingSection.Status.choices)
    error = serializers.CharField()
    task = serializers.IntegerField(allow_null=True)
    task_state = serializers.CharField(allow_null=True)


class JobEventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    at = serializers.DateTimeField()
    kind = serializers.CharField(
        help_text="queued, started, progress, retry, succeeded, failed, cancelled, lost"
    )
    task = serializers.IntegerField(help_text="The task record.")
    task_name = serializers.CharField()
    section = serializers.IntegerField(allow_null=True)
    attempt = serializers.IntegerField()
    worker = serializers.CharField()
    data = serializers.DictField()


class JobSerializer(serializers.ModelSerializer):
    """A job in lists: its state and progress (sections finished of total)."""

    progress = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()

    class Meta:
        model = WritingJob
        fields = [
            "job_id",
            "kind",
            "state",
            "progress",
            "task_prompt",
            "title",
            "error",
            "created_at",
            "started_at",
            "finished_at",
            "links",
        ]
        read_only_fields = fields

    @extend_schema_field(
        {
            "type": "object",
            "properties": {
                "done": {"type": "integer"},
                "total": {"type": "integer"},
                "percent": {"type": "integer", "nullable": True},
            },
            "required": ["done", "total", "percent"],
        }
    )
    def get_progress(self, job: WritingJob) -> dict:
        total = job.progress_total
        percent = round(100 * job.progress_done / total) if total else None
        return {"done": job.progress_done, "total": total, "percent": percent}

    def get_links(self, job: WritingJob) -> dict[str, str]:
        detail = reverse("writingjob-detail", args=[job.job_id])
        links = {
            "self": detail,
            "cancel": reverse("writingjob-cancel", args=[job.job_id]),
        }
        if job.task_id:
            links["task"] = reverse("taskrecord-detail", args=[job.task_id])
        return links


class JobDetailSerializer(JobSerializer):
    """One job: what it was asked, its outline or document, sections, timeline."""

    knowledge_base_ids = serializers.SerializerMethodField()
    document_ids = serializers.SerializerMethodField()
    outline_job_id = serializers.SerializerMethodField()
    outline = OutlineSerializer(allow_null=True, read_only=True)
    document = serializers.SerializerMethodField()
    sections = serializers.SerializerMethodField()
    task = TaskRecordSerializer(read_only=True, allow_null=True)
    events = serializers.SerializerMethodField()

    class Meta(JobSerializer.Meta):
        fields = [
            *JobSerializer.Meta.fields,
            "knowledge_base_ids",
            "document_ids",
            "outline_job_id",
            "allow_missing_sections",
            "outline",
            "document",
            "sections",
            "task",
            "events",
        ]
        read_only_fields = fields

    def get_knowledge_base_ids(self, job: WritingJob) -> list[int]:
        return sorted(job.knowledge_bases.values_list("id", flat=True))

    def get_document_ids(self, job: WritingJob) -> list[int]:
        return sorted(job.context_documents.values_list("id", flat=True))

    def get_outline_job_id(self, job: WritingJob) -> str | None:
        return job.outline_job.job_id if job.outline_job_id else None

    @extend_schema_field(DocumentResultSerializer(allow_null=True))
    def get_document(self, job: WritingJob) -> dict | None:
        if job.kind != WritingJob.Kind.DOCUMENT or job.state != job.State.SUCCEEDED:
            return None
        return DocumentResultSerializer(
            {
                "title": job.title,
                "content": job.content,
                "references": job.references,
                "missing_sections": job.missing_sections,
                "document_id": job.result_document_id,
                "knowledge_base_id": job.target_knowledge_base_id,
            }
        ).data

    @extend_schema_field(SectionStateSerializer(many=True))
    def get_sections(self, job: WritingJob) -> list[dict]:
        records = jobs.section_records(job)
        rows = []
        for section in job.sections.order_by("position"):
            record = records.get(section.position)
            rows.append(
                {
                    "position": section.position,
                    "heading": section.heading,
                    "status": section.status,
                    "error": section.error,
                    "task": record.pk if record else None,
                    "task_state": record.state if record else None,
                }
            )
        return SectionStateSerializer(rows, many=True).data

    @extend_schema_field(JobEventSerializer(many=True))
    def get_events(self, job: WritingJob) -> list[dict]:
        rows = [
            {
                "id": event.id,
                "at": event.at,
                "kind": event.kind,
                "task": event.record_id,
                "task_name": event.record.name,
                "section": jobs.section_position(event.record),
                "attempt": event.attempt,
                "worker": event.worker,
                "data": event.data,
            }
            for event in reversed(list(jobs.job_events(job)))
        ]
        return JobEventSerializer(rows, many=True).data
