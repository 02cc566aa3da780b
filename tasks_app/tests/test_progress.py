"""report_progress throttling and the cancel check, without a worker: the task
request is faked through celery's current_task proxy (our own seam)."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest

from claw.celery import app
from tasks_app import progress, services
from tasks_app.models import TaskRecord

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(django_capture_on_commit_callbacks):
    with (
        mock.patch.object(app, "send_task"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        record = services.submit("tests.progress_loop", args=[10])
    services.mark_started(record.celery_id, name=record.name, worker="w1")
    request = SimpleNamespace(id=record.celery_id, called_directly=False)
    backend = mock.Mock()
    task = SimpleNamespace(request=request, backend=backend)
    with mock.patch.object(progress, "current_task", task):
        yield record, backend


def test_a_tight_loop_of_progress_reports_writes_only_a_handful_of_events(
    running, settings
):
    record, _ = running
    settings.CLAW_PROGRESS_INTERVAL = 0.5
    for step in range(1, 10_001):
        progress.report_progress(step, 10_000, f"step {step}")

    events = record.events.filter(kind="progress").count()
    record.refresh_from_db()
    assert 2 <= events <= 10  # the first report, the final one, one per interval
    assert record.progress_current == 10_000
    assert record.progress_message == "step 10000"


def test_a_progress_report_after_a_cancel_stops_the_task_and_revokes_the_record(
    running, settings
):
    record, backend = running
    TaskRecord.objects.filter(pk=record.pk).update(cancel_requested=True)

    with pytest.raises(progress.TaskCancelled):
        progress.report_progress(1, 10)

    record.refresh_from_db()
    assert record.state == TaskRecord.State.REVOKED
    backend.mark_as_revoked.assert_called_once()


def test_report_progress_outside_a_worker_does_nothing():
    progress.report_progress(1, 2)  # no current task: no error, no write
    assert not TaskRecord.objects.exists()


def test_progress_with_an_unknown_total_is_throttled_too(running, settings):
    record, _ = running
    settings.CLAW_PROGRESS_INTERVAL = 0.5
    for step in range(1, 5_001):
        progress.report_progress(step, 0, "counting")

    assert record.events.filter(kind="progress").count() <= 5
