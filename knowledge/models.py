"""Knowledge bases, their documents, and the embedded chunks that search reads.

Only knowledge.services writes these rows.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models


def content_hash(text: str) -> str:
    """The hash incremental updates compare: sha256 of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class KnowledgeBase(models.Model):
    """A set of documents searched together, with one embedding model.

    The provider, model and dimension are set at creation: vectors of different
    models cannot be compared, so changing them (`reindex_knowledge --provider`)
    rebuilds every vector.
    """

    class Provider(models.TextChoices):
        HASHING = "hashing", "Feature hashing (offline)"
        SENTENCE_TRANSFORMERS = "sentence-transformers", "sentence-transformers"
        OPENAI = "openai", "OpenAI-compatible endpoint"
        E5_SMALL = "e5-small", "multilingual-e5-small (offline, bundled)"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="knowledge_bases",
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    embedding_provider = models.CharField(
        max_length=30, choices=Provider.choices, default=Provider.HASHING
    )
    embedding_model = models.CharField(
        max_length=200,
        blank=True,
        help_text="Model name for the provider; blank means the provider's default.",
    )
    embedding_dimension = models.PositiveIntegerField(
        default=384, help_text="Length of every vector in this knowledge base."
    )
    hybrid = models.BooleanField(
        default=False,
        help_text="Rank search results by reciprocal-rank fusion of the vectors' "
        "cosine and BM25 over the chunk texts.",
    )
    version = models.PositiveBigIntegerField(
        default=0,
        help_text="Changes whenever any vector changes; search caches per version.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["owner", "-id"], name="kb_owner_id")]

    def __str__(self) -> str:
        return self.name


class Document(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        VECTORIZING = "vectorizing", "Vectorizing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    knowledge_base = models.ForeignKey(
        KnowledgeBase, on_delete=models.CASCADE, related_name="documents"
    )
    title = models.CharField(max_length=300)
    source = models.CharField(
        max_length=500,
        blank=True,
        help_text="Where the text came from: an uploaded file name, a URL, a job.",
    )
    content = models.TextField()
    content_hash = models.CharField(
        max_length=64, help_text="sha256 of the content, set on every save."
    )
    vectorized_hash = models.CharField(
        max_length=64,
        blank=True,
        help_text="content_hash when the vectors were last built; an incremental "
        "update re-embeds documents where the two differ.",
    )
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.PENDING
    )
    chunk_count = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    last_vectorized_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["knowledge_base", "-id"], name="document_kb_id"),
            models.Index(fields=["status", "-id"], name="document_status_id"),
        ]

    def __str__(self) -> str:
        return self.title

    def save(self, *args, **kwargs):
        self.content_hash = content_hash(self.content)
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "content" in update_fields:
            kwargs["update_fields"] = {*update_fields, "content_hash"}
        super().save(*args, **kwargs)


class Chunk(models.Model):
    """One passage of a document and its vector (float32 bytes, little-endian)."""

    document = models.ForeignKey(
        Document, on_delete=models.CASCADE, related_name="chunks"
    )
    # Denormalised from the document so search loads a knowledge base's vectors
    # with one indexed scan, without a join.
    knowledge_base = models.ForeignKey(
        KnowledgeBase, on_delete=models.CASCADE, related_name="chunks"
    )
    position = models.PositiveIntegerField(help_text="0-based order in the document.")
    text = models.TextField()
    start = models.PositiveIntegerField(help_text="Offset of the first character.")
    end = models.PositiveIntegerField(help_text="Offset after the last character.")
    content_hash = models.CharField(max_length=64)
    embedding = models.BinaryField(null=True, blank=True)
    model_name = models.CharField(max_length=200, blank=True)
    dimension = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["document_id", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["document", "position"], name="chunk_document_position"
            )
        ]
        indexes = [
            models.Index(fields=["knowledge_base", "id"], name="chunk_kb_id"),
            models.Index(fields=["content_hash", "model_name"], name="chunk_hash"),
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.position}"
