"""Writing jobs (an outline from a query, a document from an outline) and the
sections of a document job.

The tables are the ones these models had in the knowledge app
(knowledge_writingjob, knowledge_writingsection and the job's many-to-many
tables): the move to this app changed Django's state only.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class WritingJob(models.Model):
    """A writing job: an outline from a query, or a document from an outline.

    Only writing.jobs (and writing.sections) write these rows. job_id is the client's name for the job
    (unique per owner), so posting the same job_id again finds this job instead of
    starting a second one.
    """

    class Kind(models.TextChoices):
        OUTLINE = "outline", "Outline from a query"
        DOCUMENT = "document", "Document from an outline"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE_STATES = (State.PENDING, State.RUNNING)

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="writing_jobs"
    )
    job_id = models.CharField(
        max_length=100, help_text="The client's id for the job, unique per owner."
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.PENDING
    )
    task_prompt = models.TextField(
        blank=True, help_text="What to write about (outline jobs search with it)."
    )
    knowledge_bases = models.ManyToManyField(
        "knowledge.KnowledgeBase", blank=True, related_name="writing_jobs"
    )
    context_documents = models.ManyToManyField(
        "knowledge.Document",
        blank=True,
        related_name="+",
        help_text="Search only these documents (besides whole knowledge bases).",
    )
    outline = models.JSONField(
        null=True,
        blank=True,
        help_text="{title, sections: [{heading, key_points, passages}]}: the "
        "result of an outline job, the input of a document job.",
    )
    outline_job = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="document_jobs",
        help_text="The outline job a document job took its outline from.",
    )
    target_knowledge_base = models.ForeignKey(
        "knowledge.KnowledgeBase",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Where the written document is added (and vectorized).",
    )
    allow_missing_sections = models.BooleanField(
        default=False,
        help_text="A failed section is left out (marked missing) instead of "
        "failing the job.",
    )
    title = models.CharField(max_length=300, blank=True)
    content = models.TextField(blank=True, help_text="The written document.")
    references = models.JSONField(
        default=list, blank=True, help_text="The passages the document cites."
    )
    missing_sections = models.JSONField(default=list, blank=True)
    result_document = models.ForeignKey(
        "knowledge.Document",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The document added to the target knowledge base.",
    )
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    task = models.ForeignKey(
        "tasks_app.TaskRecord",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The job's task; a document job's sections are its children.",
    )
    request_hash = models.CharField(
        max_length=64,
        help_text="sha256 of the request: the same job_id for another request "
        "is refused.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # The table the job had in the knowledge app, kept by the move (its
        # many-to-many tables follow from this name).
        db_table = "knowledge_writingjob"
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "job_id"], name="writingjob_owner_job_id"
            )
        ]
        indexes = [
            models.Index(fields=["owner", "-id"], name="writingjob_owner_id"),
            models.Index(fields=["state", "-id"], name="writingjob_state_id"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.job_id}"

    @property
    def is_final(self) -> bool:
        return self.state not in self.ACTIVE_STATES


class WritingSection(models.Model):
    """One section of a document job, written by its own task."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        WRITING = "writing", "Writing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINAL_STATUSES = (Status.DONE, Status.FAILED, Status.CANCELLED)

    job = models.ForeignKey(
        WritingJob, on_delete=models.CASCADE, related_name="sections"
    )
    position = models.PositiveIntegerField(help_text="0-based order in the outline.")
    heading = models.CharField(max_length=300)
    key_points = models.JSONField(default=list, blank=True)
    passages = models.JSONField(
        default=list,
        blank=True,
        help_text="The supporting passages, numbered [1], [2], ... in the text.",
    )
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING
    )
    content = models.TextField(blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "knowledge_writingsection"
        ordering = ["job_id", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "position"], name="writingsection_job_position"
            )
        ]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.position} {self.heading}"
