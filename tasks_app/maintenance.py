"""Cleanup and self-healing of the ledger: the bodies of the maintenance tasks."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db.models import Max, Q
from django.utils import timezone
from django_celery_results.models import TaskResult

from claw.celery import registered_tasks
from tasks_app import alerts, broker_inspect, services, workers
from tasks_app.models import TaskEvent, TaskRecord

logger = logging.getLogger(__name__)

BATCH = 500
State = TaskRecord.State


# --- cleanup ----------------------------------------------------------------


def _batches_of_ids(queryset, batch: int):
    """Yield pk-ordered lists of at most `batch` ids, re-querying each time.

    Rows are deleted between batches, so the next query starts after them; only
    ids are ever loaded.
    """
    last = 0
    while True:
        ids = list(
            queryset.filter(pk__gt=last)
            .order_by("pk")
            .values_list("pk", flat=True)[:batch]
        )
        if not ids:
            return
        yield ids
        last = ids[-1]


def _delete_records(queryset, *, batch: int, dry_run: bool) -> tuple[int, int]:
    """Delete records and their events; return (records, events)."""
    records = events = 0
    for ids in _batches_of_ids(queryset, batch):
        if dry_run:
            records += len(ids)
            events += TaskEvent.objects.filter(record_id__in=ids).count()
            continue
        # Events first, in their own batches: one record may have thousands of
        # progress events and the cascade would otherwise be one huge DELETE.
        for event_ids in _batches_of_ids(
            TaskEvent.objects.filter(record_id__in=ids), batch * 10
        ):
            TaskEvent.objects.filter(pk__in=event_ids).delete()
            events += len(event_ids)
        # only("pk"): the collector loads ids, not the args and tracebacks.
        TaskRecord.objects.filter(pk__in=ids).only("pk").delete()
        records += len(ids)
    return records, events


def retention_rules() -> list[tuple[Q, int]]:
    """(filter, days) per state, with per-task overrides carved out of the state rule."""
    overrides = settings.CLAW_RETENTION_OVERRIDES
    rules = []
    for state, days in settings.CLAW_RECORD_RETENTION_DAYS.items():
        special = [name for name, per in overrides.items() if state in per]
        rules.append((Q(state=state) & ~Q(name__in=special), days))
    for name, per_state in overrides.items():
        for state, days in per_state.items():
            rules.append((Q(state=state, name=name), days))
    return rules


def cleanup_expired(*, dry_run: bool = False, batch: int = BATCH) -> dict[str, int]:
    """Delete results past CELERY_RESULT_EXPIRES and final records past retention.

    Bounded batches of ids in pk order: short transactions, constant memory.
    """
    now = timezone.now()
    expired_results = TaskResult.objects.filter(
        date_done__lt=now - timedelta(seconds=settings.CELERY_RESULT_EXPIRES)
    )
    results = 0
    for ids in _batches_of_ids(expired_results, batch * 2):
        if not dry_run:
            TaskResult.objects.filter(pk__in=ids).delete()
        results += len(ids)
    records = events = 0
    for condition, days in retention_rules():
        expired = TaskRecord.objects.filter(
            condition, finished_at__lt=now - timedelta(days=days)
        )
        r, e = _delete_records(expired, batch=batch, dry_run=dry_run)
        records += r
        events += e
    report = {"results": results, "records": records, "events": events}
    logger.info(
        "cleanup_expired_results%s: %s", " (dry run)" if dry_run else "", report
    )
    return report


# --- health -------------------------------------------------------------------


@dataclass
class HealthReport:
    lost: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    republished: list[int] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    live_workers: list[str] = field(default_factory=list)
    broker_readable: bool = True

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for a log or a person (never a raw dict)."""
        return (
            f"lost {ids(self.lost)}; re-queued {ids(self.requeued)}; "
            f"re-published {ids(self.republished)}; "
            f"alerts: {', '.join(self.alerts) or 'none'}; "
            f"live workers: {', '.join(self.live_workers) or 'none'}"
        )


def ids(pks: list[int], shown: int = 20) -> str:
    """ "#3, #7" (the first 20, then how many more), or "none"."""
    if not pks:
        return "none"
    more = f" and {len(pks) - shown} more" if len(pks) > shown else ""
    return ", ".join(f"#{pk}" for pk in pks[:shown]) + more


def is_idempotent(name: str) -> bool:
    """Tasks are idempotent unless they say otherwise (claw_idempotent = False)."""
    return bool(getattr(registered_tasks().get(name), "claw_idempotent", True))


def hard_time_limit(name: str) -> float:
    # registered_tasks imports every tasks module: a manage.py process has not.
    task = registered_tasks().get(name)
    return getattr(task, "time_limit", None) or settings.CELERY_TASK_TIME_LIMIT


def find_lost(alive: set[str], now=None) -> list[TaskRecord]:
    """STARTED past the task's hard time limit on a worker that does not answer.

    Signals never arrive from a worker that was killed outright, so these records
    would stay STARTED forever.
    """
    now = now or timezone.now()
    shortest = min(
        [settings.CELERY_TASK_TIME_LIMIT]
        + [hard_time_limit(name) for name in list(registered_tasks())]
    )
    candidates = [
        record
        for record in TaskRecord.objects.filter(
            state=State.STARTED, started_at__lt=now - timedelta(seconds=shortest)
        ).iterator()
        if record.started_at < now - timedelta(seconds=hard_time_limit(record.name))
    ]
    # A task that replaced itself with a canvas (Task.replace: its id passes to the
    # canvas's last task) stays STARTED while its children run; it is waiting, not
    # lost, as long as one of them is still active.
    waiting = set(
        TaskRecord.objects.filter(
            parent_id__in=[record.pk for record in candidates],
            state__in=TaskRecord.ACTIVE_STATES,
        ).values_list("parent_id", flat=True)
    )
    candidates = [record for record in candidates if record.pk not in waiting]
    if any(record.worker in alive for record in candidates):
        # A live worker past the hard limit is not running it either when it lost
        # its broker connection meanwhile (Celery cancels such tasks and their
        # message may be gone): ask what it actually runs.
        running = _running_ids()
        return [
            r
            for r in candidates
            if r.worker not in alive
            or (running is not None and r.celery_id not in running)
        ]
    return candidates


def _running_ids() -> set[str] | None:
    try:
        cluster = workers.cluster()
    except Exception as exc:
        logger.warning("Inspect failed: %r", exc)
        return None
    return {task.get("id") for info in cluster for task in info.active}


def reconcile_lost(alive: set[str], *, dry_run: bool, report: HealthReport) -> None:
    for record in find_lost(alive):
        if dry_run:
            report.lost.append(record.pk)
            continue
        reason = f"worker {record.worker or '?'} stopped answering"
        if not services.mark_lost(record, reason=reason):
            continue  # it finished meanwhile
        report.lost.append(record.pk)
        if is_idempotent(record.name):
            record.refresh_from_db()
            try:
                services.retry(record)
            except services.InvalidTransition:
                continue
            report.requeued.append(record.pk)


def find_vanished(now=None) -> list[TaskRecord] | None:
    """PENDING records past the threshold whose message the broker no longer holds.

    None if the broker cannot be read (nothing is re-published then).
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.CLAW_REPUBLISH_PENDING_AFTER)
    # The last "queued" event, not created_at: a manual retry re-queues an old record.
    candidates = list(
        TaskRecord.objects.filter(state=State.PENDING, created_at__lt=cutoff)
        .filter(Q(eta__isnull=True) | Q(eta__lte=now))
        .annotate(queued_at=Max("events__at", filter=Q(events__kind="queued")))
        .filter(Q(queued_at__isnull=True) | Q(queued_at__lt=cutoff))
        .only("pk", "celery_id")
        .order_by("pk")[:10000]
    )
    if not candidates:
        return []
    queues = set(settings.CLAW_QUEUES) | {
        queue
        for queue in TaskRecord.objects.filter(pk__in=[r.pk for r in candidates])
        .values_list("queue", flat=True)
        .distinct()
    }
    present = broker_inspect.queued_task_ids(sorted(queues))
    if present is None:
        return None
    missing = [r.pk for r in candidates if r.celery_id not in present]
    # Re-read: a worker may have taken a message between the two reads.
    return list(TaskRecord.objects.filter(pk__in=missing, state=State.PENDING))


def republish_vanished(*, dry_run: bool, report: HealthReport) -> None:
    vanished = find_vanished()
    if vanished is None:
        report.broker_readable = False
        return
    for record in vanished:
        if dry_run or services.publish(record):
            report.republished.append(record.pk)


def check_alerts(alive: set[str], *, dry_run: bool, report: HealthReport) -> None:
    raised: list[tuple[str, str, str]] = []
    if not alive:
        raised.append(
            (
                "no-live-worker",
                "No Celery worker answers",
                "No worker replied to ping; queued tasks are not running.",
            )
        )
    try:
        lengths = workers.queue_lengths()
    except Exception as exc:
        lengths = {}
        raised.append(("broker-down", "The broker cannot be read", repr(exc)))
    for queue, length in sorted(lengths.items()):
        if length > settings.CLAW_ALERT_BACKLOG:
            raised.append(
                (
                    f"backlog:{queue}",
                    f"Queue {queue} has a backlog of {length} tasks",
                    f"Threshold is CLAW_ALERT_BACKLOG={settings.CLAW_ALERT_BACKLOG}.",
                )
            )
    ratio = failure_ratio()
    if ratio is not None and ratio[0] > settings.CLAW_ALERT_FAILURE_RATIO:
        raised.append(
            (
                "failure-ratio",
                f"{ratio[0]:.0%} of tasks failed in the last hour",
                f"{ratio[1]} of {ratio[2]} finished tasks failed or were lost.",
            )
        )
    for name, expected in missed_periodic_tasks():
        raised.append(
            (
                f"missed-run:{name}",
                f"Periodic task {name!r} missed its run",
                f"Expected at {expected:%Y-%m-%d %H:%M:%S %Z}; is beat running?",
            )
        )
    report.alerts = [key for key, _, _ in raised]
    if dry_run:
        return
    for key, subject, body in raised:
        alerts.raise_alert(key, subject, body)
    alerts.resolve_others(report.alerts)


def failure_ratio(now=None) -> tuple[float, int, int] | None:
    """(ratio, failed, finished) over the last hour; None below the minimum sample."""
    now = now or timezone.now()
    finished = TaskRecord.objects.filter(
        finished_at__gte=now - timedelta(hours=1),
        state__in=[State.SUCCESS, State.FAILURE, State.LOST],
    )
    total = finished.count()
    if total < settings.CLAW_ALERT_FAILURE_MIN_TASKS:
        return None
    failed = finished.exclude(state=State.SUCCESS).count()
    return failed / total, failed, total


def missed_periodic_tasks(now=None) -> list[tuple[str, object]]:
    """Enabled periodic tasks whose expected run is more than the grace period late."""
    from django_celery_beat.models import PeriodicTask

    now = now or timezone.now()
    grace = timedelta(seconds=settings.CLAW_ALERT_MISSED_RUN_GRACE)
    missed = []
    for task in PeriodicTask.objects.filter(enabled=True).exclude(
        name="celery.backend_cleanup"
    ):
        if task.one_off and task.total_run_count:
            continue
        if task.expires and task.expires < now:
            continue
        since = task.last_run_at or task.start_time or task.date_changed
        if since is None:
            continue
        try:
            # Celery's remaining_estimate is relative to now: negative = overdue.
            expected = now + task.schedule.remaining_estimate(since)
        except Exception:  # a schedule type we cannot estimate
            continue
        if expected + grace < now:
            missed.append((task.name, expected))
    return missed


def check_health(*, dry_run: bool = False, alerts_enabled: bool = True) -> dict:
    """Reconcile the ledger with the cluster and the broker, then raise alerts."""
    report = HealthReport()
    try:
        alive = set(workers.ping())
    except Exception as exc:
        logger.warning("Ping failed: %r", exc)
        alive = set()
    report.live_workers = sorted(alive)
    reconcile_lost(alive, dry_run=dry_run, report=report)
    republish_vanished(dry_run=dry_run, report=report)
    if alerts_enabled:
        check_alerts(alive, dry_run=dry_run, report=report)
    if not dry_run:  # a dry run changed nothing; its caller prints the report
        logger.info("check_task_health: %s", report.summary())
    return report.as_dict()
