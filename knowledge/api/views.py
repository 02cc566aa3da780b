"""Knowledge bases, documents (JSON text or uploaded files), vector tasks, search."""

from __future__ import annotations

import json
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Sum
from django.db.models.functions import Coalesce
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from knowledge import embeddings, extract, search, services
from knowledge.api.serializers import (
    INT64_MAX,
    BulkDocumentsCreatedSerializer,
    BulkDocumentsSerializer,
    DocumentCreatedSerializer,
    DocumentEditSerializer,
    DocumentListSerializer,
    DocumentSerializer,
    DocumentUploadSerializer,
    KnowledgeBaseEditSerializer,
    KnowledgeBaseSerializer,
    SearchRequestSerializer,
    SearchResultSerializer,
    UpdateRequestSerializer,
)
from knowledge.models import Document, KnowledgeBase, content_hash
from tasks_app.api import idempotency, params
from tasks_app.api.permissions import OwnedQuerysetMixin
from tasks_app.api.serializers import TaskRecordSerializer
from tasks_app.models import TaskRecord

SUBMITTED = {
    202: TaskRecordSerializer,
    409: {"description": "The Idempotency-Key was used for a different request."},
}
TOO_LARGE = {413: {"description": "Larger than KNOWLEDGE_MAX_UPLOAD_BYTES."}}
CREATED = {201: DocumentCreatedSerializer, **TOO_LARGE}


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "too_large"


class EmbeddingFailed(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "embedding_unavailable"


def check_size(field: str, size: int) -> None:
    limit = settings.KNOWLEDGE_MAX_UPLOAD_BYTES
    if size > limit:
        raise PayloadTooLarge({field: f"Larger than the limit of {limit} bytes."})


def check_body_size(request, field: str) -> None:
    """Refuse a body over DATA_UPLOAD_MAX_MEMORY_SIZE before parsing it, naming
    the field (Django would refuse it while parsing, without a name). That limit
    allows KNOWLEDGE_MAX_UPLOAD_BYTES of content whatever its JSON escaping;
    the content itself is then checked against KNOWLEDGE_MAX_UPLOAD_BYTES."""
    length = request.META.get("CONTENT_LENGTH") or "0"
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(
            {field: f"The request body is larger than the limit of {limit} bytes."}
        )


def submitted(
    request,
    task_name: str,
    submit: Callable[[str | None], TaskRecord],
    target: KnowledgeBase | Document,
    args: list | None = None,
):
    """202 with the task submit(key) queues; a repeated Idempotency-Key answers
    with the first request's task instead, if that request was for the same
    target and args, else 409 (tasks_app.api.idempotency)."""
    record = idempotency.submit_once(
        request,
        task_name,
        submit,
        replay=lambda previous: idempotency.same_request(previous, target, args=args),
    )
    return Response(TaskRecordSerializer(record).data, status=status.HTTP_202_ACCEPTED)


def created(document: Document) -> Response:
    return Response(DocumentCreatedSerializer(document).data, status=201)


def bulk_keys(user, key: str, kb: KnowledgeBase, items: list[dict]):
    """The idempotency keys of a bulk request's tasks (one per document: the
    request's key, a digest of the whole request and the index), or the
    Response replaying an earlier request with this key; KeyReused (409) if that
    request was another one (another body, or another endpoint's)."""
    idempotency.lock(user, key)
    if TaskRecord.objects.filter(owner=user, idempotency_key=key).exists():
        raise idempotency.KeyReused()
    request = [kb.pk] + [
        [item["title"], item.get("source", ""), content_hash(item["content"])]
        for item in items
    ]
    digest = content_hash(json.dumps(request))[:32]
    prefix = idempotency.item_prefix(key)
    previous = list(
        TaskRecord.objects.filter(
            owner=user, idempotency_key__startswith=prefix
        ).values_list("idempotency_key", "object_id", "pk")
    )
    if previous:
        if any(k.split(":")[2] != digest for k, _, _ in previous):
            raise idempotency.KeyReused()
        previous.sort(key=lambda row: int(row[0].rsplit(":", 1)[1]))
        return bulk_created(kb.pk, [(doc, pk) for _, doc, pk in previous])
    return [f"{prefix}{digest}:{i}" for i in range(len(items))]


def bulk_created(kb_id: int, added: list[tuple[int, int]]) -> Response:
    """201 listing the documents (id, vectorize task id) of a bulk request."""
    documents = Document.objects.in_bulk([doc for doc, _ in added])
    rows = [
        {
            "id": doc,
            "title": getattr(documents.get(doc), "title", ""),
            "content_hash": getattr(documents.get(doc), "content_hash", ""),
            "status": getattr(documents.get(doc), "status", "deleted"),
            "vectorize_task": task,
        }
        for doc, task in added
    ]
    body = BulkDocumentsCreatedSerializer({"knowledge_base": kb_id, "documents": rows})
    return Response(body.data, status=status.HTTP_201_CREATED)


def own_documents(kb: KnowledgeBase, ids: list[int]) -> list[int]:
    """The ids, each of which must be a document of this knowledge base (another
    user's, or another knowledge base's, is a 404 naming the field, as its own
    URL would be; searching for it would only find nothing)."""
    found = set(
        Document.objects.filter(knowledge_base=kb, pk__in=ids).values_list(
            "pk", flat=True
        )
    )
    missing = [i for i in dict.fromkeys(ids) if i not in found]
    if missing:
        listed = ", ".join(map(str, missing[:20]))
        raise NotFound(
            {"document_ids": [f"No such document in this knowledge base: {listed}."]}
        )
    return ids


class KnowledgeBaseViewSet(OwnedQuerysetMixin, viewsets.ModelViewSet):
    queryset = KnowledgeBase.objects.annotate(
        document_count=Count("documents"),
        chunk_count=Coalesce(Sum("documents__chunk_count"), 0),
    ).order_by("-id")
    serializer_class = KnowledgeBaseSerializer
    http_method_names = ["get", "post", "patch", "delete"]
    throttle_scope = "submit"  # used by the submission actions only (SUBMIT)

    def get_serializer_class(self):
        if self.action == "partial_update":
            return KnowledgeBaseEditSerializer
        return super().get_serializer_class()

    def perform_create(self, serializer):
        try:
            created = services.create_knowledge_base(
                self.request.user, **serializer.validated_data
            )
        except services.InvalidInput as exc:
            raise idempotency.invalid(exc) from None
        serializer.instance = self.get_queryset().get(pk=created.pk)

    def perform_update(self, serializer):
        try:
            services.edit_knowledge_base(
                serializer.instance, **serializer.validated_data
            )
        except services.InvalidInput as exc:
            raise idempotency.invalid(exc) from None
        serializer.instance = self.get_queryset().get(pk=serializer.instance.pk)

    def perform_destroy(self, instance):
        services.delete_knowledge_base(instance)

    @extend_schema(
        request=UpdateRequestSerializer,
        parameters=[idempotency.PARAMETER],
        responses=SUBMITTED,
    )
    @action(detail=True, methods=["post"], url_path="update", **idempotency.SUBMIT)
    def start_update(self, request, pk=None):
        kb = self.get_object()
        body = UpdateRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return submitted(
            request,
            services.UPDATE,
            lambda key: services.submit_update(
                kb, body.validated_data["mode"], owner=request.user, idempotency_key=key
            ),
            kb,
            # the same key for another mode is another request
            args=[kb.pk, body.validated_data["mode"]],
        )

    @extend_schema(
        request=None, parameters=[idempotency.PARAMETER], responses=SUBMITTED
    )
    @action(detail=True, methods=["delete"], url_path="vectors", **idempotency.SUBMIT)
    def delete_vectors(self, request, pk=None):
        kb = self.get_object()
        return submitted(
            request,
            services.DELETE_VECTORS,
            lambda key: services.submit_delete_vectors(
                kb=kb, owner=request.user, idempotency_key=key
            ),
            kb,
        )

    @extend_schema(
        request=SearchRequestSerializer,
        responses={
            200: SearchResultSerializer,
            502: {"description": "The embedding provider refused the query."},
            503: {"description": "The embedding provider is unavailable."},
        },
    )
    @action(detail=True, methods=["post"])
    def search(self, request, pk=None):
        kb = self.get_object()
        body = SearchRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        filters = None
        if "document_ids" in data:
            filters = {"document_ids": own_documents(kb, data["document_ids"])}
        try:
            hits = search.search(kb, data["query"], k=data["k"], filters=filters)
        except embeddings.EmbeddingUnavailable as exc:
            raise EmbeddingFailed({"query": str(exc)}) from None
        except embeddings.EmbeddingRejected as exc:
            failed = EmbeddingFailed({"query": str(exc)})
            failed.status_code = status.HTTP_502_BAD_GATEWAY
            raise failed from None
        return Response(SearchResultSerializer({"results": hits}).data)


STATUS = OpenApiParameter("status", str, enum=list(Document.Status.values))
KB = OpenApiParameter(
    "knowledge_base",
    {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
    description="Only this knowledge base",
)


class DocumentViewSet(
    OwnedQuerysetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Document.objects.all()
    serializer_class = DocumentSerializer
    owner_field = "knowledge_base__owner"
    http_method_names = ["get", "post", "patch", "delete"]
    throttle_scope = "submit"  # used by the submission actions only (SUBMIT)

    def get_serializer_class(self):
        if self.action == "list":
            return DocumentListSerializer
        if self.action == "partial_update":
            return DocumentEditSerializer
        return super().get_serializer_class()

    @extend_schema(parameters=[KB, STATUS])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def filter_queryset(self, queryset):
        kb_id = params.id_param(
            self.request, "knowledge_base", "Must be an id (an integer)."
        )
        if kb_id is not None:
            queryset = queryset.filter(knowledge_base_id=kb_id)
        status = params.choice_param(self.request, "status", Document.Status.values)
        if status is not None:
            queryset = queryset.filter(status=status)
        return queryset.order_by("-id")

    @extend_schema(responses=CREATED)
    def create(self, request, *args, **kwargs):
        check_body_size(request, "content")
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        self.perform_create(serializer)
        return created(serializer.instance)

    def perform_create(self, serializer):
        data = serializer.validated_data
        check_size("content", len(data["content"].encode()))
        serializer.instance = services.add_document(
            data["knowledge_base"],
            title=data["title"],
            content=data["content"],
            source=data.get("source", ""),
            vectorize=data["vectorize"],
        )

    @extend_schema(responses={200: DocumentSerializer, **TOO_LARGE})
    def partial_update(self, request, *args, **kwargs):
        check_body_size(request, "content")
        return super().partial_update(request, *args, **kwargs)

    def perform_update(self, serializer):
        data = serializer.validated_data
        if "content" in data:
            check_size("content", len(data["content"].encode()))
        services.update_document(
            serializer.instance,
            title=data.get("title"),
            content=data.get("content"),
            source=data.get("source"),
            vectorize=data.get("vectorize", True),
        )

    def perform_destroy(self, instance):
        services.delete_document(instance)

    @extend_schema(
        request={"multipart/form-data": DocumentUploadSerializer}, responses=CREATED
    )
    @action(detail=False, methods=["post"], parser_classes=[MultiPartParser])
    def upload(self, request):
        check_body_size(request, "file")
        body = DocumentUploadSerializer(data=request.data, context={"request": request})
        body.is_valid(raise_exception=True)
        data = body.validated_data
        check_size("file", data["file"].size)
        try:
            title, text = extract.text_from_upload(
                data["file"].name, data["file"].read()
            )
        except extract.UnreadableFile as exc:
            raise ValidationError({"file": str(exc)}) from None
        document = services.add_document(
            data["knowledge_base"],
            title=(data.get("title") or title)[:300],
            content=text,
            source=data.get("source") or data["file"].name[:500],
            vectorize=data["vectorize"],
        )
        return created(document)

    @extend_schema(
        request=BulkDocumentsSerializer,
        parameters=[idempotency.PARAMETER],
        responses={
            201: BulkDocumentsCreatedSerializer,
            409: SUBMITTED[409],
            **TOO_LARGE,
        },
    )
    @action(detail=False, methods=["post"], **idempotency.SUBMIT)
    def bulk(self, request):
        """Add up to 500 documents to a knowledge base, each vectorized: all or
        nothing (an invalid document is a 400 naming its index and field, and
        nothing is written). The vectorize tasks belong to the caller; a repeated
        Idempotency-Key with the same body answers with the first request's
        documents, with another body 409."""
        check_body_size(request, "documents")
        body = BulkDocumentsSerializer(data=request.data, context={"request": request})
        body.is_valid(raise_exception=True)
        kb = body.validated_data["knowledge_base"]
        items = body.validated_data["documents"]
        too_large = {
            str(i): {"content": "Larger than the limit of "
                     f"{settings.KNOWLEDGE_MAX_UPLOAD_BYTES} bytes."}
            for i, item in enumerate(items)
            if len(item["content"].encode()) > settings.KNOWLEDGE_MAX_UPLOAD_BYTES
        }  # fmt: skip
        if too_large:
            raise PayloadTooLarge({"documents": too_large})
        key = idempotency.key_from(request)
        with transaction.atomic():
            keys = None
            if key is not None:
                keys = bulk_keys(request.user, key, kb, items)
                if isinstance(keys, Response):
                    return keys
            added = services.add_documents(
                kb, items, owner=request.user, idempotency_keys=keys
            )
        return bulk_created(kb.pk, [(d.pk, r.pk) for d, r in added])

    @extend_schema(
        request=None, parameters=[idempotency.PARAMETER], responses=SUBMITTED
    )
    @action(detail=True, methods=["post"], **idempotency.SUBMIT)
    def vectorize(self, request, pk=None):
        document = self.get_object()
        return submitted(
            request,
            services.VECTORIZE,
            lambda key: services.submit_vectorize(
                document, owner=request.user, idempotency_key=key
            ),
            document,
        )

    @extend_schema(
        request=None, parameters=[idempotency.PARAMETER], responses=SUBMITTED
    )
    @action(detail=True, methods=["delete"], url_path="vectors", **idempotency.SUBMIT)
    def delete_vectors(self, request, pk=None):
        document = self.get_object()
        return submitted(
            request,
            services.DELETE_VECTORS,
            lambda key: services.submit_delete_vectors(
                document=document, owner=request.user, idempotency_key=key
            ),
            document,
        )
