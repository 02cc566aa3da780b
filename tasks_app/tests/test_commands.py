from __future__ import annotations

from datetime import timedelta
from io import StringIO
from unittest.mock import patch

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tasks_app import services
from tasks_app.models import TaskRecord

State = TaskRecord.State
COMMANDS = [
    "claw_status",
    "cleanup_results",
    "requeue_stuck",
    "retry_failed",
    "reindex_knowledge",
    "ensure_schedules",
]


def run(*args, **kwargs) -> str:
    out = StringIO()
    call_command(*args, stdout=out, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("name", COMMANDS)
def test_every_maintenance_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        call_command(name, "--help")
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text
    if name != "claw_status":
        assert "--dry-run" in text


@pytest.mark.django_db
def test_claw_status_shows_workers_queues_counts_and_oldest_pending():
    record = services.submit("tests.add", args=[1, 2])
    with (
        patch("tasks_app.workers.ping", return_value=["w1@host"]),
        patch("tasks_app.workers.queue_lengths", return_value={"default": 4}),
    ):
        out = run("claw_status")

    assert "Workers (1 live):" in out and "w1@host" in out
    assert "default" in out and " 4" in out
    assert "PENDING  1" in out
    assert f"Oldest pending: #{record.pk} tests.add" in out


@pytest.mark.django_db
def test_cleanup_results_dry_run_reports_and_keeps_rows(settings):
    settings.CLAW_RECORD_RETENTION_DAYS = {"SUCCESS": 1}
    record = services.submit("tests.add", args=[1, 2])
    TaskRecord.objects.filter(pk=record.pk).update(
        state=State.SUCCESS, finished_at=timezone.now() - timedelta(days=2)
    )

    out = run("cleanup_results", "--dry-run")
    assert "Would delete 0 results, 1 task records and 1 events." in out
    assert TaskRecord.objects.filter(pk=record.pk).exists()

    out = run("cleanup_results")
    assert "Deleted 0 results, 1 task records and 1 events." in out
    assert not TaskRecord.objects.filter(pk=record.pk).exists()


@pytest.mark.django_db
def test_requeue_stuck_dry_run_names_lost_records_without_changing_them():
    from django_celery_beat.models import PeriodicTask

    PeriodicTask.objects.all().delete()  # no missed-run alerts from old schedules
    record = services.submit("tests.add", args=[1, 2])
    TaskRecord.objects.filter(pk=record.pk).update(
        state=State.STARTED,
        worker="dead@host",
        started_at=timezone.now() - timedelta(hours=1),
    )
    with (
        patch("tasks_app.workers.ping", return_value=[]),
        patch("tasks_app.workers.queue_lengths", return_value={}),
        patch("tasks_app.broker_inspect.queued_task_ids", return_value=set()),
    ):
        out = run("requeue_stuck", "--dry-run")
        record.refresh_from_db()
        assert record.state == State.STARTED
        out = " ".join(out.split())
        assert f"Stuck STARTED records would be marked LOST: #{record.pk}" in out
        assert "Alerts would be raised: no-live-worker" in out

        with patch("claw.celery.app.send_task"):
            out = run("requeue_stuck", "--no-alerts")
    record.refresh_from_db()
    out = " ".join(out.split())
    assert f"Stuck STARTED records marked LOST: #{record.pk}" in out
    assert f"Re-queued: #{record.pk}" in out
    assert record.state == State.PENDING


@pytest.mark.django_db
def test_retry_failed_retries_only_that_task_since_the_date():
    def failed(name, days_ago):
        record = services.submit(name, args=[1, 2])
        TaskRecord.objects.filter(pk=record.pk).update(
            state=State.FAILURE,
            error="boom",
            finished_at=timezone.now() - timedelta(days=days_ago),
        )
        return record

    recent = failed("tests.add", 1)
    old = failed("tests.add", 10)
    other = failed("tests.fail", 1)
    since = (timezone.now() - timedelta(days=3)).date().isoformat()

    out = run("retry_failed", "--task", "tests.add", "--since", since, "--dry-run")
    assert f"would retry #{recent.pk}" in out and "Would retry 1" in out
    assert TaskRecord.objects.get(pk=recent.pk).state == State.FAILURE

    with patch("claw.celery.app.send_task"):
        out = run("retry_failed", "--task", "tests.add", "--since", since)
    assert "Retried 1 tests.add record(s)" in out
    states = dict(TaskRecord.objects.values_list("pk", "state"))
    assert states[recent.pk] == State.PENDING
    assert states[old.pk] == states[other.pk] == State.FAILURE


def test_retry_failed_rejects_a_bad_date():
    with pytest.raises(CommandError, match="--since"):
        call_command("retry_failed", "--task", "x", "--since", "yesterday")


@pytest.mark.django_db
def test_ensure_schedules_dry_run_then_creates_the_defaults():
    from django_celery_beat.models import PeriodicTask

    PeriodicTask.objects.all().delete()
    out = run("ensure_schedules", "--dry-run")
    assert "Would create: claw: cleanup expired results" in out
    assert not PeriodicTask.objects.exists()
    out = run("ensure_schedules")
    assert PeriodicTask.objects.count() == 3
