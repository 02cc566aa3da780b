from __future__ import annotations

from datetime import timedelta
from unittest.mock import patch

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from tasks_app import alerts, broker_inspect, maintenance, services
from tasks_app.models import AlertClaim, StaffAlert, TaskEvent, TaskRecord
from tasks_app.workers import WorkerInfo

State = TaskRecord.State


def make_record(name="tests.add", state=State.SUCCESS, age_days=0, **fields):
    record = services.submit(name, args=[1, 2])
    fields.setdefault("finished_at", timezone.now() - timedelta(days=age_days))
    TaskRecord.objects.filter(pk=record.pk).update(state=state, **fields)
    for _ in range(3):
        services._add_event(record.celery_id, TaskEvent.Kind.PROGRESS)
    record.refresh_from_db()
    return record


@pytest.fixture
def quiet_cluster():
    """No worker, empty queues: the seams check_health talks to."""
    with (
        patch("tasks_app.workers.ping", return_value=["w1@host"]) as ping,
        patch("tasks_app.workers.queue_lengths", return_value={"default": 0}),
        patch("tasks_app.broker_inspect.queued_task_ids", return_value=set()),
        patch("tasks_app.workers.cluster", return_value=[]),
        patch("claw.celery.app.send_task") as send_task,
    ):
        yield ping, send_task


# --- cleanup -------------------------------------------------------------------


@pytest.mark.django_db
def test_cleanup_deletes_only_records_past_their_state_retention(settings):
    settings.CLAW_RECORD_RETENTION_DAYS = {"SUCCESS": 7, "FAILURE": 90}
    old_success = make_record(state=State.SUCCESS, age_days=8)
    young_success = make_record(state=State.SUCCESS, age_days=6)
    old_failure = make_record(state=State.FAILURE, age_days=30)
    running = make_record(state=State.STARTED, age_days=400)

    report = maintenance.cleanup_expired()

    assert report["records"] == 1 and report["events"] == 4
    remaining = set(TaskRecord.objects.values_list("pk", flat=True))
    assert remaining == {young_success.pk, old_failure.pk, running.pk}
    assert not TaskEvent.objects.filter(record_id=old_success.pk).exists()
    assert old_success.pk not in remaining


@pytest.mark.django_db
def test_cleanup_applies_per_task_overrides(settings):
    settings.CLAW_RECORD_RETENTION_DAYS = {"SUCCESS": 7}
    settings.CLAW_RETENTION_OVERRIDES = {
        "tests.add": {"SUCCESS": 1},
        "tests.sleep": {"SUCCESS": 30},
    }
    short = make_record("tests.add", age_days=2)
    kept_long = make_record("tests.sleep", age_days=10)
    default = make_record("tests.fail", age_days=10)

    maintenance.cleanup_expired()

    assert list(TaskRecord.objects.values_list("pk", flat=True)) == [kept_long.pk]
    assert short.pk != default.pk


@pytest.mark.django_db
def test_cleanup_works_in_bounded_batches_and_never_reads_event_rows(settings):
    settings.CLAW_RECORD_RETENTION_DAYS = {"SUCCESS": 1}
    for _ in range(7):
        make_record(age_days=3)

    with CaptureQueriesContext(connection) as queries:
        report = maintenance.cleanup_expired(batch=3)

    assert report["records"] == 7 and report["events"] == 28
    assert TaskRecord.objects.count() == 0 and TaskEvent.objects.count() == 0
    event_table = TaskEvent._meta.db_table
    selects = [q["sql"] for q in queries if q["sql"].startswith("SELECT")]
    # Only ids are selected from the event table, never whole rows.
    assert any(f'FROM "{event_table}"' in sql for sql in selects)
    assert not any(f'"{event_table}"."data"' in sql for sql in selects)
    # Every id query is limited to the batch size.
    record_id_queries = [s for s in selects if "LIMIT 3" in s]
    assert len(record_id_queries) >= 3


@pytest.mark.django_db
def test_cleanup_dry_run_counts_without_deleting(settings):
    settings.CLAW_RECORD_RETENTION_DAYS = {"SUCCESS": 1}
    make_record(age_days=3)
    TaskResult.objects.create(task_id="old", status="SUCCESS")
    TaskResult.objects.filter(task_id="old").update(
        date_done=timezone.now() - timedelta(days=60)
    )

    report = maintenance.cleanup_expired(dry_run=True)

    assert report == {"results": 1, "records": 1, "events": 4}
    assert TaskRecord.objects.count() == 1 and TaskResult.objects.count() == 1
    maintenance.cleanup_expired()
    assert TaskRecord.objects.count() == 0 and TaskResult.objects.count() == 0


def test_retention_overrides_are_parsed_from_the_environment_format():
    from django.core.exceptions import ImproperlyConfigured

    from claw.settings import parse_retention_overrides

    assert parse_retention_overrides("a.b:success=1, c.d:FAILURE=180") == {
        "a.b": {"SUCCESS": 1},
        "c.d": {"FAILURE": 180},
    }
    with pytest.raises(ImproperlyConfigured, match="task.name:STATE=days"):
        parse_retention_overrides("a.b=3")


# --- lost tasks -------------------------------------------------------------------


@pytest.mark.django_db
def test_a_task_started_past_its_time_limit_on_a_dead_worker_is_lost_and_requeued(
    quiet_cluster, django_capture_on_commit_callbacks
):
    ping, send_task = quiet_cluster
    started = timezone.now() - timedelta(seconds=400)  # default hard limit is 300
    record = make_record(
        state=State.STARTED, started_at=started, worker="dead@host", finished_at=None
    )
    alive = make_record(
        state=State.STARTED, started_at=started, worker="w1@host", finished_at=None
    )
    young = make_record(
        state=State.STARTED,
        started_at=timezone.now() - timedelta(seconds=30),
        worker="dead@host",
        finished_at=None,
    )
    old_celery_id = record.celery_id
    w1 = WorkerInfo("w1@host", alive=True, active=[{"id": alive.celery_id}])

    with (
        django_capture_on_commit_callbacks(execute=True),
        patch("tasks_app.workers.cluster", return_value=[w1]),
    ):
        report = maintenance.check_health(alerts_enabled=False)

    assert report["lost"] == [record.pk] and report["requeued"] == [record.pk]
    record.refresh_from_db()
    assert record.state == State.PENDING and record.celery_id != old_celery_id
    kinds = list(record.events.values_list("kind", flat=True))
    assert kinds[-2:] == ["lost", "queued"]
    assert send_task.call_args.kwargs["task_id"] == record.celery_id
    alive.refresh_from_db()
    young.refresh_from_db()
    assert alive.state == young.state == State.STARTED


@pytest.mark.django_db
def test_a_non_idempotent_lost_task_is_marked_lost_but_not_requeued(quiet_cluster):
    from claw.celery import app

    task = app.tasks["tests.add"]
    record = make_record(
        state=State.STARTED,
        started_at=timezone.now() - timedelta(seconds=400),
        worker="dead@host",
        finished_at=None,
    )
    with patch.object(task, "claw_idempotent", False, create=True):
        report = maintenance.check_health(alerts_enabled=False)

    record.refresh_from_db()
    assert report["lost"] == [record.pk] and report["requeued"] == []
    assert record.state == State.LOST


@pytest.mark.django_db
def test_a_task_its_live_worker_no_longer_runs_is_lost_after_the_time_limit(
    quiet_cluster,
):
    # e.g. Celery cancelled it when the worker lost its broker connection
    started = timezone.now() - timedelta(seconds=400)
    record = make_record(
        state=State.STARTED, started_at=started, worker="w1@host", finished_at=None
    )
    w1 = WorkerInfo("w1@host", alive=True, active=[{"id": "something-else"}])
    with patch("tasks_app.workers.cluster", return_value=[w1]):
        report = maintenance.check_health(alerts_enabled=False)

    assert report["lost"] == [record.pk]


@pytest.mark.django_db
def test_a_task_replaced_by_a_canvas_is_not_lost_while_its_children_run(
    quiet_cluster,
):
    # Task.replace(chord(...)): the parent's record stays STARTED on a worker that
    # no longer runs it until the chord's callback runs under the parent's id.
    started = timezone.now() - timedelta(seconds=400)
    waiting = make_record(
        state=State.STARTED, started_at=started, worker="w1@host", finished_at=None
    )
    done = make_record(
        state=State.STARTED, started_at=started, worker="w1@host", finished_at=None
    )
    make_record(state=State.PENDING, parent=waiting, finished_at=None)
    make_record(state=State.SUCCESS, parent=done)
    w1 = WorkerInfo("w1@host", alive=True, active=[])

    with patch("tasks_app.workers.cluster", return_value=[w1]):
        report = maintenance.check_health(alerts_enabled=False)

    assert report["lost"] == [done.pk]


# --- vanished messages ------------------------------------------------------------


@pytest.mark.django_db
def test_old_pending_records_missing_from_the_broker_are_republished(
    quiet_cluster, settings
):
    settings.CLAW_REPUBLISH_PENDING_AFTER = 60
    ping, send_task = quiet_cluster
    old = timezone.now() - timedelta(seconds=120)
    vanished = services.submit("tests.add", args=[1, 2])
    queued = services.submit("tests.add", args=[3, 4])
    future = services.submit("tests.add", args=[5, 6])
    fresh = services.submit("tests.add", args=[7, 8])
    for record in (vanished, queued, future):
        TaskRecord.objects.filter(pk=record.pk).update(created_at=old)
        TaskEvent.objects.filter(record_id=record.pk).update(at=old)
    TaskRecord.objects.filter(pk=future.pk).update(
        eta=timezone.now() + timedelta(hours=1)
    )

    with patch(
        "tasks_app.broker_inspect.queued_task_ids", return_value={queued.celery_id}
    ):
        report = maintenance.check_health(alerts_enabled=False)

    assert report["republished"] == [vanished.pk]
    assert send_task.call_count == 1
    assert send_task.call_args.kwargs["task_id"] == vanished.celery_id
    assert send_task.call_args.args[0] == "tests.add"
    assert send_task.call_args.kwargs["args"] == [1, 2]
    assert fresh.pk not in report["republished"]


@pytest.mark.django_db
def test_nothing_is_republished_when_the_broker_cannot_be_read(quiet_cluster, settings):
    settings.CLAW_REPUBLISH_PENDING_AFTER = 0
    ping, send_task = quiet_cluster
    services.submit("tests.add", args=[1, 2])

    with patch("tasks_app.broker_inspect.queued_task_ids", return_value=None):
        report = maintenance.check_health(alerts_enabled=False)

    assert report["broker_readable"] is False and report["republished"] == []
    send_task.assert_not_called()


@pytest.mark.django_db
def test_redis_presence_check_sees_every_priority_list_and_reserved_messages(
    redis_broker,
):
    import json

    def message(task_id):
        return json.dumps({"headers": {"id": task_id}, "body": ""})

    redis_broker.flushdb()
    redis_broker.lpush("default", message("p0"))
    redis_broker.lpush("default:7", message("p7"))
    redis_broker.lpush("ai_high_priority:9", message("ai9"))
    redis_broker.hset(
        "unacked", "tag", json.dumps([json.loads(message("eta")), "", ""])
    )
    try:
        ids = broker_inspect.queued_task_ids()
    finally:
        redis_broker.flushdb()

    assert ids == {"p0", "p7", "ai9", "eta"}
    assert "default:9" in broker_inspect.redis_queue_keys(["default"])


def test_filesystem_presence_check_reads_message_files(tmp_path, settings):
    import json

    (tmp_path / "1_a.default.msg").write_text(json.dumps({"headers": {"id": "x1"}}))
    (tmp_path / "2_b.default.msg").write_text("not json")
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(tmp_path)}
    assert broker_inspect.queued_task_ids(url="filesystem://") == {"x1"}


# --- alerts -------------------------------------------------------------------


@pytest.mark.django_db
def test_no_live_worker_raises_one_alert_until_it_is_resolved(caplog):
    PeriodicTask.objects.all().delete()  # no missed-run alerts from old schedules
    with (
        patch("tasks_app.workers.ping", return_value=[]),
        patch("tasks_app.workers.queue_lengths", return_value={}),
        patch("tasks_app.alerts._notify") as notify,
    ):
        first = maintenance.check_health()
        second = maintenance.check_health()

    assert first["alerts"] == second["alerts"] == ["no-live-worker"]
    assert notify.call_count == 1
    assert "STAFF ALERT no-live-worker" in caplog.text
    alert = StaffAlert.objects.get(key="no-live-worker")
    assert alert.active and alert.times_sent == 1

    with (
        patch("tasks_app.workers.ping", return_value=["w@h"]),
        patch("tasks_app.workers.queue_lengths", return_value={}),
    ):
        maintenance.check_health()
    alert.refresh_from_db()
    assert not alert.active and alert.resolved_at


@pytest.mark.django_db
def test_an_active_alert_is_sent_again_after_the_repeat_window(settings):
    settings.CLAW_ALERT_REPEAT_MINUTES = 10
    with patch("tasks_app.alerts._notify") as notify:
        assert alerts.raise_alert("k", "subject")
        assert not alerts.raise_alert("k", "subject")
        AlertClaim.objects.update(sent_at=timezone.now() - timedelta(minutes=11))
        assert alerts.raise_alert("k", "subject")
    assert notify.call_count == 2


@pytest.mark.django_db
def test_an_alert_raised_again_after_it_was_resolved_is_sent_at_once():
    with patch("tasks_app.alerts._notify") as notify:
        assert alerts.raise_alert("k", "subject")
        assert alerts.resolve_others([]) == 1
        assert alerts.raise_alert("k", "subject")  # inside the repeat window
        assert not alerts.raise_alert("k", "subject")
    assert notify.call_count == 2
    assert StaffAlert.objects.get(key="k").times_sent == 2


@pytest.mark.django_db
def test_alerts_are_logged_only_while_notify_staff_is_missing(caplog):
    with patch.object(alerts, "_notifiers", []):
        assert alerts.raise_alert("missing-notifier", "subject", "body")
    assert "notify_staff unavailable; alert logged only" in caplog.text
    assert "STAFF ALERT missing-notifier: subject" in caplog.text


@pytest.mark.django_db
def test_alerts_go_to_notify_staff_with_their_dedupe_key():
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    notifications = SimpleNamespace(notify_staff=MagicMock())
    with patch.object(alerts, "_notifiers", [notifications.notify_staff]):
        assert alerts.raise_alert("backlog:default", "Backlog", "body")
    notifications.notify_staff.assert_called_once_with(
        "Backlog", "body", dedupe_key="backlog:default"
    )


@pytest.mark.django_db
def test_backlog_and_failure_ratio_raise_alerts(settings):
    PeriodicTask.objects.all().delete()
    settings.CLAW_ALERT_BACKLOG = 10
    settings.CLAW_ALERT_FAILURE_MIN_TASKS = 4
    settings.CLAW_ALERT_FAILURE_RATIO = 0.4
    for state in (State.FAILURE, State.FAILURE, State.SUCCESS, State.LOST):
        make_record(state=state)
    with (
        patch("tasks_app.workers.ping", return_value=["w@h"]),
        patch("tasks_app.workers.queue_lengths", return_value={"default": 11, "x": 3}),
        patch("tasks_app.alerts._notify") as notify,
    ):
        report = maintenance.check_health()

    assert report["alerts"] == ["backlog:default", "failure-ratio"]
    subjects = [c.args[0] for c in notify.call_args_list]
    assert "75% of tasks failed in the last hour" in subjects


@pytest.mark.django_db
def test_a_periodic_task_that_missed_its_run_raises_an_alert(settings):
    settings.CLAW_ALERT_MISSED_RUN_GRACE = 60
    # The default schedules were installed when the test database was created,
    # which may be long ago with --reuse-db; they would rightly count as missed.
    PeriodicTask.objects.all().delete()
    every, _ = IntervalSchedule.objects.get_or_create(
        every=5, period=IntervalSchedule.MINUTES
    )
    PeriodicTask.objects.create(
        name="late",
        task="tests.add",
        interval=every,
        last_run_at=timezone.now() - timedelta(minutes=30),
    )
    PeriodicTask.objects.create(
        name="on time",
        task="tests.add",
        interval=every,
        last_run_at=timezone.now() - timedelta(minutes=1),
    )
    PeriodicTask.objects.create(
        name="disabled",
        task="tests.add",
        interval=every,
        enabled=False,
        last_run_at=timezone.now() - timedelta(minutes=30),
    )

    missed = [name for name, _ in maintenance.missed_periodic_tasks()]

    assert missed == ["late"]


@pytest.mark.worker
def test_both_maintenance_tasks_run_on_a_real_worker_and_report_counts(
    transactional_db, celery_worker, settings
):
    from tests.harness import wait_for

    old = make_record(state=State.SUCCESS, age_days=400)
    cleanup = services.submit("tasks_app.cleanup_expired_results")
    health = services.submit("tasks_app.check_task_health")

    def finished():
        return all(
            r.is_final
            for r in TaskRecord.objects.filter(pk__in=[cleanup.pk, health.pk])
        )

    wait_for(finished, 60, message="both maintenance tasks to finish")
    results = {
        r.task_name: r.result
        for r in TaskResult.objects.filter(
            task_id__in=TaskRecord.objects.filter(
                pk__in=[cleanup.pk, health.pk]
            ).values_list("celery_id", flat=True)
        )
    }
    import json

    assert json.loads(results["tasks_app.cleanup_expired_results"])["records"] >= 1
    assert not TaskRecord.objects.filter(pk=old.pk).exists()
    health_report = json.loads(results["tasks_app.check_task_health"])
    assert celery_worker.hostname in health_report["live_workers"]
