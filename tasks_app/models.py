"""The task ledger: one TaskRecord per logical job, an append-only TaskEvent timeline.

Only tasks_app.services writes these rows. django_celery_results.TaskResult stays
Celery's own per-attempt store; records join it on celery_id.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone


class TaskState(models.TextChoices):
    # Values are Celery's state names, so API clients of the Flower era understand them.
    PENDING = "PENDING", "Pending"
    STARTED = "STARTED", "Started"
    RETRY = "RETRY", "Retrying"
    SUCCESS = "SUCCESS", "Succeeded"
    FAILURE = "FAILURE", "Failed"
    REVOKED = "REVOKED", "Cancelled"
    LOST = "LOST", "Lost"


class TaskRecord(models.Model):
    """One logical background job. Each Celery run is an attempt; celery_id is the
    current one."""

    State = TaskState
    FINAL_STATES = (TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED)
    ACTIVE_STATES = (TaskState.PENDING, TaskState.STARTED, TaskState.RETRY)
    RETRYABLE_STATES = (TaskState.FAILURE, TaskState.REVOKED, TaskState.LOST)

    name = models.CharField(
        max_length=200,
        help_text="Registered Celery task name, e.g. claw.send_notification.",
    )
    queue = models.CharField(max_length=100, default="default")
    priority = models.PositiveSmallIntegerField(
        default=5, help_text="0-9, 9 is served first on every broker."
    )
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    options = models.JSONField(
        default=dict, blank=True, help_text="Publish options kept for retries."
    )
    # Foreign keys whose lookups an index of Meta.indexes starts with carry no
    # index of their own: every ledger write (three per task) pays for each index.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="task_records",
        db_index=False,  # taskrecord_owner_id
    )
    state = models.CharField(
        max_length=10, choices=TaskState.choices, default=TaskState.PENDING
    )
    progress_current = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    progress_message = models.CharField(max_length=500, blank=True)
    attempts = models.PositiveIntegerField(
        default=0, help_text="Runs started, over every attempt of this job."
    )
    deliveries = models.PositiveIntegerField(
        default=0,
        help_text="Deliveries of the current attempt; a task that keeps killing its "
        "worker is stopped when this passes the task's limit.",
    )
    celery_id = models.CharField(
        max_length=255, unique=True, help_text="Celery id of the current attempt."
    )
    worker = models.CharField(max_length=255, blank=True)
    # The lease of a STARTED attempt: which process runs it ("hostname:pid") and
    # until when it counts as alive. The runner renews it while the task runs
    # (tasks_app.leases); a redelivery of the attempt is refused while the lease
    # is live and may take the attempt over once it lapsed (the runner died).
    # db_default: rows inserted by code that predates the column (a rolling deploy,
    # a historical migration state) get "" rather than failing NOT NULL.
    runner = models.CharField(max_length=255, blank=True, default="", db_default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    eta = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
    )
    root = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    group_id = models.CharField(max_length=255, blank=True)
    content_type = models.ForeignKey(
        ContentType,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        db_index=False,  # taskrecord_target
    )
    object_id = models.PositiveBigIntegerField(null=True, blank=True)
    target = GenericForeignKey("content_type", "object_id")
    cancel_requested = models.BooleanField(
        default=False,
        help_text="Durable cancel flag: a worker refuses to start a cancelled record.",
    )
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # Every admin filter and sort has an index that starts with it and ends
            # with id, so "newest first" under a filter is an index scan.
            models.Index(fields=["state", "-id"], name="taskrecord_state_id"),
            models.Index(fields=["name", "-id"], name="taskrecord_name_id"),
            models.Index(fields=["queue", "-id"], name="taskrecord_queue_id"),
            models.Index(fields=["owner", "-id"], name="taskrecord_owner_id"),
            models.Index(fields=["created_at"], name="taskrecord_created"),
            models.Index(
                fields=["content_type", "object_id"], name="taskrecord_target"
            ),
            models.Index(fields=["group_id"], name="taskrecord_group"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="taskrecord_owner_idempotency_key",
            )
        ]
        # The admin's operations beyond viewing, each granted on its own (least
        # privilege: is_staff only opens the admin). Run-now on schedules needs
        # django_celery_beat.change_periodictask instead.
        permissions = [
            ("retry_taskrecord", "Can retry task records"),
            ("cancel_taskrecord", "Can cancel task records"),
            ("submit_taskrecord", "Can submit any task with any arguments"),
            ("control_workers", "Can restart, grow, shrink and shut down workers"),
        ]

    def __str__(self) -> str:
        # The admin's state names (page titles, messages); the API shows Celery's.
        return f"{self.name} #{self.pk} ({self.get_state_display()})"

    @classmethod
    def for_target(cls, target: models.Model) -> models.QuerySet:
        """The records that worked on a domain object, newest first."""
        content_type = ContentType.objects.get_for_model(type(target))
        return cls.objects.filter(content_type=content_type, object_id=target.pk)

    @property
    def is_final(self) -> bool:
        return self.state in self.FINAL_STATES

    @property
    def progress_percent(self) -> int | None:
        if not self.progress_total:
            return None
        return min(100, round(100 * self.progress_current / self.progress_total))


class TaskEvent(models.Model):
    """Append-only timeline of a record: every transition and progress report."""

    class Kind(models.TextChoices):
        QUEUED = "queued"
        STARTED = "started"
        PROGRESS = "progress"
        RETRY = "retry"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        LOST = "lost"
        # A delivery the worker did not run: an earlier attempt's message, or a
        # second copy of the attempt that is running now.
        REFUSED = "refused"

    record = models.ForeignKey(
        TaskRecord,
        on_delete=models.CASCADE,
        related_name="events",
        db_index=False,  # taskevent_record_id
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    at = models.DateTimeField(auto_now_add=True)
    attempt = models.PositiveIntegerField(default=0)
    celery_id = models.CharField(max_length=255, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["record", "id"], name="taskevent_record_id"),
            # Every attempt starts with a "queued" event carrying its Celery id, so
            # the API can find a record by an earlier attempt's id; partial, so the
            # far more numerous progress events pay nothing for it.
            models.Index(
                fields=["celery_id"],
                condition=models.Q(kind="queued"),
                name="taskevent_queued_celery_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of record {self.record_id} at {self.at:%Y-%m-%d %H:%M:%S}"


class BeatLease(models.Model):
    """Which beat process may send, and when it last ticked (one row, pk=1).

    Two beats would send every periodic task twice; the lease makes the second one
    wait. The tick time doubles as beat's heartbeat for /health.
    """

    holder = models.CharField(max_length=255, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_tick_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"beat lease held by {self.holder or 'nobody'}"


class StaffAlert(models.Model):
    """One staff alert raised by check_task_health, keyed so it is sent once.

    While an alert is active it is not sent again until CLAW_ALERT_REPEAT_MINUTES
    have passed; it becomes inactive when a health check no longer sees the problem.
    """

    key = models.CharField(max_length=200, unique=True)
    subject = models.CharField(max_length=300)
    body = models.TextField(blank=True)
    active = models.BooleanField(default=True)
    first_raised_at = models.DateTimeField(auto_now_add=True)
    last_sent_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    times_sent = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.subject} ({'active' if self.active else 'resolved'})"


class RateLimitWindow(models.Model):
    """The database counter of a cluster-wide rate limit: one row per limit key.

    Used when there is no Redis (the embedded stack); tasks_app.ratelimit rolls the
    window and counts starts with conditional UPDATEs on this row.
    """

    key = models.CharField(max_length=200, unique=True)
    window = models.BigIntegerField(help_text="Index of the current window.")
    count = models.PositiveIntegerField(default=0)

    class Meta:
        # The table it had in the claw app, kept by the move (state only).
        db_table = "claw_ratelimitwindow"

    def __str__(self) -> str:
        return f"{self.key}: {self.count} in window {self.window}"


class AlertClaim(models.Model):
    """One row per staff-alert key: the claim that makes a burst send one alert,
    across processes whose caches are not shared."""

    key = models.CharField(max_length=64, unique=True)
    sent_at = models.DateTimeField()

    class Meta:
        # The table it had in the claw app, kept by the move (state only).
        db_table = "claw_alertclaim"

    def __str__(self) -> str:
        return f"{self.key} sent {self.sent_at:%Y-%m-%d %H:%M:%S}"


class ApiToken(models.Model):
    """An API credential. Only the SHA-256 of its key is stored: the key is shown
    once, when issued (tasks_app.tokens.issue). A key is 160 random bits, so a plain
    hash is the right tool (a slow password hash would buy nothing and cost every
    request); lookups go by the digest."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    # The key's first characters, to tell tokens apart without revealing them.
    prefix = models.CharField(max_length=8, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API token"
        indexes = [models.Index(fields=["user", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        expired = self.expires_at is not None and self.expires_at <= now
        return self.revoked_at is None and not expired


class TaskRollup(models.Model):
    """Counts and duration histograms of task events per time slot, name, queue
    and outcome, folded from TaskEvent rows off the hot path (tasks_app.rollups).

    span is the slot's length in seconds: 60 (the last hours, per minute), 3600
    (weeks, per hour), or 0 for the one all-time row per name, queue and outcome
    that /metrics' counters read. The dashboard and the stats API read these rows
    instead of counting records.
    """

    class Outcome(models.TextChoices):
        SENT = "sent"
        STARTED = "started"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        RETRIED = "retried"
        REVOKED = "revoked"
        LOST = "lost"

    span = models.PositiveIntegerField()
    start = models.DateTimeField()
    name = models.CharField(max_length=200)
    queue = models.CharField(max_length=100)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    count = models.BigIntegerField(default=0)
    # Durations: wait (queued to started) for "started", run time for the
    # outcomes that end a run. observed counts the events that had one.
    observed = models.BigIntegerField(default=0)
    seconds = models.FloatField(default=0.0)
    buckets = models.JSONField(
        default=list, help_text="Counts per tasks_app.rollups.BOUNDS slot (+Inf last)."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["span", "start", "name", "queue", "outcome"],
                name="taskrollup_slot",
            )
        ]

    def __str__(self) -> str:
        return f"{self.outcome} {self.name}@{self.queue} {self.start:%Y-%m-%d %H:%M}"


class RollupWatermark(models.Model):
    """How far the fold has read a ledger (TaskEvent: pk=1; a domain's ledger
    registered with tasks_app.rollups.register_ledger: its own pk), moved in the
    same transaction as the rollups it produced, so each row is counted once.

    gaps: ids above an earlier watermark that were missing when it was read
    (an event whose transaction had not committed yet, or rolled back), with the
    time first missed; each fold looks for them again until they expire.
    """

    last_id = models.BigIntegerField(default=0)
    gaps = models.JSONField(default=dict, blank=True)
    folded_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"rollups folded to event {self.last_id}"
