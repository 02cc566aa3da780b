"""The whole path on the services stack: submit -> Redis -> worker -> PostgreSQL."""

from __future__ import annotations

import json

import pytest
from django_celery_results.models import TaskResult

from tasks_app import services
from tasks_app.models import TaskRecord
from tests.harness import wait_for


@pytest.mark.worker
def test_submitted_task_runs_and_stores_its_result_on_postgres_and_redis(
    transactional_db, celery_worker
):
    record = services.submit("tasks_app.ping")

    def finished():
        record.refresh_from_db()
        return record.is_final

    wait_for(finished, 30, message="ping to finish")
    assert record.state == TaskRecord.State.SUCCESS
    assert record.worker == celery_worker.hostname
    result = TaskResult.objects.get(task_id=record.celery_id)
    assert result.status == "SUCCESS"
    assert json.loads(result.result) == "pong"
    assert list(record.events.values_list("kind", flat=True)) == [
        "queued",
        "started",
        "succeeded",
    ]
