from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from knowledge import embeddings, search, services
from knowledge.models import Document, KnowledgeBase


@extend_schema_field(OpenApiTypes.INT)
class OwnKnowledgeBaseField(serializers.PrimaryKeyRelatedField):
    """A knowledge base id; someone else's does not exist, as in a 404."""

    def get_queryset(self):
        request = self.context.get("request")
        queryset = KnowledgeBase.objects.all()
        if request is None or request.user.is_staff:
            return queryset
        return queryset.filter(owner=request.user)


class KnowledgeBaseSerializer(serializers.ModelSerializer):
    """The embedding provider, model and dimension are fixed at creation."""

    document_count = serializers.IntegerField(read_only=True)
    chunk_count = serializers.IntegerField(read_only=True)
    embedding_dimension = serializers.IntegerField(
        min_value=1, max_value=embeddings.MAX_DIMENSION, default=384
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
            "version",
            "document_count",
            "chunk_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["version", "created_at", "updated_at"]

    def get_fields(self):
        fields = super().get_fields()
        if self.instance is not None:  # editing: the embedding settings stay
            for name in (
                "embedding_provider",
                "embedding_model",
                "embedding_dimension",
            ):
                fields[name].read_only = True
        return fields


WRITABLE_DOCUMENT_FIELDS = ("knowledge_base", "title", "source", "content", "vectorize")


class DocumentSerializer(serializers.ModelSerializer):
    knowledge_base = OwnKnowledgeBaseField()
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

    def get_fields(self):
        fields = super().get_fields()
        if self.instance is not None:  # documents do not move
            fields["knowledge_base"] = serializers.PrimaryKeyRelatedField(
                read_only=True
            )
        return fields


class DocumentListSerializer(DocumentSerializer):
    """Lists leave the content out: one page could otherwise be 250 MB."""

    class Meta(DocumentSerializer.Meta):
        fields = [f for f in DocumentSerializer.Meta.fields if f != "content"]


class DocumentUploadSerializer(serializers.Serializer):
    knowledge_base = OwnKnowledgeBaseField()
    file = serializers.FileField(
        help_text="A .txt, .md or .html file (UTF-8, UTF-16 with BOM or GB18030)."
    )
    title = serializers.CharField(
        max_length=300,
        required=False,
        help_text="Defaults to the HTML title or the file name.",
    )
    source = serializers.CharField(max_length=500, required=False)
    vectorize = serializers.BooleanField(default=True)


class UpdateRequestSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(
        choices=services.MODES,
        default=services.INCREMENTAL,
        help_text="incremental: changed or new documents; full: every document; "
        "rebuild: drop every vector, then every document.",
    )


class SearchRequestSerializer(serializers.Serializer):
    query = serializers.CharField(max_length=2000)
    k = serializers.IntegerField(min_value=1, max_value=search.MAX_K, default=5)
    document_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
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
