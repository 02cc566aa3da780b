from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import NotFound

from knowledge import embeddings, search, services
from knowledge.models import Document, KnowledgeBase
from tasks_app.api.fields import INT64_MAX, TextField
from tasks_app.api.serializers import TaskRecordSerializer
from tasks_app.models import TaskRecord


@extend_schema_field(OpenApiTypes.INT)
class OwnKnowledgeBaseField(serializers.PrimaryKeyRelatedField):
    """A knowledge base id. One that does not exist or is someone else's is a 404
    naming the field, as the knowledge base's own URL would be."""

    def get_queryset(self):
        request = self.context.get("request")
        queryset = KnowledgeBase.objects.all()
        if request is None or request.user.is_staff:
            return queryset
        return queryset.filter(owner=request.user)

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if exc.get_codes() == ["does_not_exist"]:
                raise NotFound({self.field_name: "No such knowledge base."}) from None
            raise


class KnowledgeBaseSerializer(serializers.ModelSerializer):
    """The embedding provider, model and dimension are fixed at creation (an
    operator moves a knowledge base with `reindex_knowledge --provider`)."""

    hybrid = serializers.BooleanField(
        required=False,
        help_text="Rank search results by reciprocal-rank fusion of the vectors' "
        "cosine and BM25 over the chunk texts. Default: on for e5-small knowledge "
        "bases, off for the others (see the README's measurements).",
    )

    name = TextField(max_length=200)
    description = TextField(visible=False, required=False)
    embedding_model = TextField(
        visible=False,
        required=False,
        max_length=200,
        help_text="Blank: the provider's default. The hashing and e5-small "
        "providers each have one model (v1, multilingual-e5-small-q4) and ignore "
        "this.",
    )
    document_count = serializers.IntegerField(read_only=True)
    chunk_count = serializers.IntegerField(read_only=True)
    embedding_dimension = serializers.IntegerField(
        min_value=1,
        max_value=embeddings.MAX_DIMENSION,
        default=384,
        help_text="Vector size for providers that take one (hashing, "
        "sentence-transformers, openai); e5-small's vectors always have 384.",
    )

    class Meta:
        model = KnowledgeBase
        fields = [
            "id",
            "name",
            "description",
            "embedding_provider",
            "embedding_model",
            "embedding_dimension",
            "hybrid",
            "version",
            "document_count",
            "chunk_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["version", "created_at", "updated_at"]


class KnowledgeBaseEditSerializer(KnowledgeBaseSerializer):
    """Name and description only: the embedding settings never change."""

    embedding_model = serializers.CharField(read_only=True)
    embedding_dimension = serializers.IntegerField(read_only=True)

    class Meta(KnowledgeBaseSerializer.Meta):
        read_only_fields = [
            *KnowledgeBaseSerializer.Meta.read_only_fields,
            "embedding_provider",
        ]


WRITABLE_DOCUMENT_FIELDS = ("knowledge_base", "title", "source", "content", "vectorize")


class DocumentSerializer(serializers.ModelSerializer):
    knowledge_base = OwnKnowledgeBaseField()
    title = TextField(max_length=300)
    source = TextField(visible=False, required=False, max_length=500)
    content = TextField()
    vectorize = serializers.BooleanField(
        default=True,
        write_only=True,
        help_text="Queue knowledge.vectorize_document for a new or changed text.",
    )

    class Meta:
        model = Document
        fields = [
            "id",
            "knowledge_base",
            "title",
            "source",
            "content",
            "content_hash",
            "status",
            "chunk_count",
            "error",
            "last_vectorized_at",
            "created_at",
            "updated_at",
            "vectorize",
        ]
        read_only_fields = [f for f in fields if f not in WRITABLE_DOCUMENT_FIELDS]


class DocumentEditSerializer(DocumentSerializer):
    knowledge_base = serializers.PrimaryKeyRelatedField(read_only=True)  # stays


class DocumentListSerializer(DocumentSerializer):
    """Lists leave the content out: one page could otherwise be 250 MB."""

    class Meta(DocumentSerializer.Meta):
        fields = [f for f in DocumentSerializer.Meta.fields if f != "content"]


class DocumentCreatedSerializer(DocumentListSerializer):
    """A new document as created: without the content the client just sent (it
    may be megabytes), with the vectorize task it queued (null without one)."""

    vectorize_task = serializers.SerializerMethodField()

    class Meta(DocumentListSerializer.Meta):
        fields = [*DocumentListSerializer.Meta.fields, "vectorize_task"]

    @extend_schema_field(TaskRecordSerializer(allow_null=True))
    def get_vectorize_task(self, document):
        record = TaskRecord.for_target(document).filter(name=services.VECTORIZE).first()
        return record and TaskRecordSerializer(record).data


class DocumentUploadSerializer(serializers.Serializer):
    knowledge_base = OwnKnowledgeBaseField()
    file = serializers.FileField(
        help_text="A .txt, .md or .html file (UTF-8, UTF-16 with BOM or GB18030)."
    )
    title = TextField(
        max_length=300,
        required=False,
        help_text="Defaults to the HTML title or the file name.",
    )
    source = TextField(visible=False, required=False, max_length=500)
    vectorize = serializers.BooleanField(default=True)


class UpdateRequestSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(
        choices=services.MODES,
        default=services.INCREMENTAL,
        help_text="incremental: changed or new documents; full: every document; "
        "rebuild: drop every vector, then every document.",
    )


class SearchRequestSerializer(serializers.Serializer):
    query = TextField(max_length=2000)
    k = serializers.IntegerField(min_value=1, max_value=search.MAX_K, default=5)
    document_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=INT64_MAX),
        required=False,
        max_length=1000,
        help_text="Only search these documents.",
    )


class SearchHitSerializer(serializers.Serializer):
    chunk_id = serializers.IntegerField()
    document_id = serializers.IntegerField()
    document_title = serializers.CharField()
    position = serializers.IntegerField()
    text = serializers.CharField()
    score = serializers.FloatField()


class SearchResultSerializer(serializers.Serializer):
    results = SearchHitSerializer(many=True)


class BulkDocumentSerializer(serializers.Serializer):
    title = TextField(max_length=300)
    source = TextField(visible=False, required=False, max_length=500, default="")
    content = TextField()


class BulkDocumentsSerializer(serializers.Serializer):
    """POST /documents/bulk/: an error of one document is reported under its
    index, {"documents": {"3": {"title": [...]}}}."""

    knowledge_base = OwnKnowledgeBaseField()
    documents = serializers.ListField(
        child=BulkDocumentSerializer(),
        min_length=1,
        max_length=services.BULK_LIMIT,
        help_text=f"1 to {services.BULK_LIMIT} documents; each is vectorized.",
    )


class BulkDocumentCreatedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    title = serializers.CharField()
    content_hash = serializers.CharField()
    status = serializers.CharField()
    vectorize_task = serializers.IntegerField(
        help_text="The id of its knowledge.vectorize_document task (GET "
        "/api/v1/tasks/{id}/)."
    )


class BulkDocumentsCreatedSerializer(serializers.Serializer):
    knowledge_base = serializers.IntegerField()
    documents = BulkDocumentCreatedSerializer(many=True)
