"""tasks_app.services without a worker: the conditional transitions, submit's
publish-on-commit, cancel, retry and redaction. The broker send and the worker
control broadcast are patched (our own seams)."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from claw.celery import app
from tasks_app import services
from tasks_app.models import TaskEvent, TaskRecord

State = TaskRecord.State
pytestmark = pytest.mark.django_db


@pytest.fixture
def send_task():
    with mock.patch.object(app, "send_task") as sent:
        yield sent


@pytest.fixture
def revoke():
    with mock.patch("tasks_app.workers.revoke") as revoked:
        yield revoked


@pytest.fixture
def user():
    return get_user_model().objects.create_user("alice", password="pw-12345678")


def kinds(record: TaskRecord) -> list[str]:
    return list(record.events.order_by("id").values_list("kind", flat=True))


def submitted(send_task, django_capture_on_commit_callbacks, **kwargs) -> TaskRecord:
    with django_capture_on_commit_callbacks(execute=True):
        record = services.submit(kwargs.pop("name", "tests.add"), **kwargs)
    return record


def started(send_task, django_capture_on_commit_callbacks, **kwargs) -> TaskRecord:
    record = submitted(send_task, django_capture_on_commit_callbacks, **kwargs)
    assert (
        services.mark_started(record.celery_id, name=record.name, worker="w1") is None
    )
    record.refresh_from_db()
    return record


def test_submit_writes_a_pending_record_and_queued_event_and_publishes_on_commit(
    send_task, django_capture_on_commit_callbacks, user
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        record = services.submit("tests.add", args=[2, 3], owner=user, priority=7)
        assert not send_task.called  # nothing leaves before the commit
    for callback in callbacks:
        callback()

    record.refresh_from_db()
    assert record.state == State.PENDING
    assert record.args == [2, 3]
    assert kinds(record) == ["queued"]
    send_task.assert_called_once()
    call = send_task.call_args
    assert call.args == ("tests.add",)
    assert call.kwargs["task_id"] == record.celery_id
    assert call.kwargs["args"] == [2, 3]
    assert call.kwargs["headers"] == {"claw_record": record.pk}
    assert call.kwargs["priority"] == 2  # Redis serves the lowest number first


def test_a_rolled_back_submit_leaves_no_record_and_publishes_nothing(
    send_task, django_capture_on_commit_callbacks
):
    class Rollback(Exception):
        pass

    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(Rollback),
        transaction.atomic(),
    ):
        services.submit("tests.add", args=[1, 1])
        raise Rollback

    assert callbacks == []
    assert not send_task.called
    assert not TaskRecord.objects.exists()
    assert not TaskEvent.objects.exists()


@pytest.fixture
def publishes():
    """publish and publish_many as submit's callbacks call them (still sending)."""
    with (
        mock.patch.object(services, "publish", wraps=services.publish) as one,
        mock.patch.object(
            services, "publish_many", wraps=services.publish_many
        ) as many,
    ):
        yield one, many


def test_the_submits_of_one_transaction_go_out_together_at_the_first_ones_turn(
    send_task, publishes, django_capture_on_commit_callbacks
):
    one, many = publishes
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        records = [services.submit("tests.add", args=[i, 1]) for i in range(4)]

    # each submit still has its own callback (Django drops it with a savepoint)
    assert sum(isinstance(c, services._PublishOnCommit) for c in callbacks) == 4
    assert not one.called
    many.assert_called_once()
    assert [r.pk for r, _ in many.call_args.args[0]] == [r.pk for r in records]
    assert send_task.call_count == 4  # each message sent once
    assert [c.kwargs["task_id"] for c in send_task.call_args_list] == [
        r.celery_id for r in records
    ]


def test_a_submit_of_a_rolled_back_savepoint_does_not_go_out_with_the_others(
    send_task, publishes, django_capture_on_commit_callbacks
):
    class Rollback(Exception):
        pass

    one, many = publishes
    with django_capture_on_commit_callbacks(execute=True):
        kept = services.submit("tests.add", args=[1, 1])
        with pytest.raises(Rollback), transaction.atomic():
            dropped = services.submit("tests.add", args=[2, 2])
            raise Rollback
        last = services.submit("tests.add", args=[3, 3])

    assert [r.pk for r, _ in many.call_args.args[0]] == [kept.pk, last.pk]
    sent = [c.kwargs["task_id"] for c in send_task.call_args_list]
    assert sent == [kept.celery_id, last.celery_id]
    assert dropped.celery_id not in sent
    assert not TaskRecord.objects.filter(pk=dropped.pk).exists()


def test_only_submits_whose_callbacks_run_are_published(
    send_task, publishes, django_capture_on_commit_callbacks
):
    """A submit whose transaction has not committed (here: the test's own, which
    never does) is not sent along with a later one that is."""
    earlier = services.submit("tests.add", args=[1, 1])
    with django_capture_on_commit_callbacks(execute=True):
        later = services.submit("tests.add", args=[2, 2])

    sent = [c.kwargs["task_id"] for c in send_task.call_args_list]
    assert sent == [later.celery_id]
    assert earlier.celery_id not in sent


def test_the_same_idempotency_key_returns_the_same_record_and_publishes_once(
    send_task, django_capture_on_commit_callbacks, user
):
    first = submitted(
        send_task, django_capture_on_commit_callbacks, owner=user, idempotency_key="k"
    )
    second = submitted(
        send_task, django_capture_on_commit_callbacks, owner=user, idempotency_key="k"
    )

    assert first.pk == second.pk
    assert TaskRecord.objects.count() == 1
    assert send_task.call_count == 1


def test_an_unknown_task_or_a_bad_priority_is_rejected_before_anything_is_written(
    send_task,
):
    with pytest.raises(services.UnknownTask):
        services.submit("tests.no_such_task")
    with pytest.raises(ValueError, match="priority"):
        services.submit("tests.add", priority=10)
    with pytest.raises(ValueError, match="priority"):
        services.submit("tests.add", priority=-1)
    assert not TaskRecord.objects.exists()


def test_secret_looking_arguments_are_stored_redacted_but_sent_in_full(
    send_task, django_capture_on_commit_callbacks
):
    kwargs = {"api_key": "sk-1", "nested": {"password": "pw", "name": "n"}, "x": 1}
    record = submitted(
        send_task,
        django_capture_on_commit_callbacks,
        name="tests.effect",
        kwargs=kwargs,
    )

    record.refresh_from_db()
    assert record.kwargs == {
        "api_key": "[redacted]",
        "nested": {"password": "[redacted]", "name": "n"},
        "x": 1,
    }
    assert send_task.call_args.kwargs["kwargs"] == kwargs


def test_retry_refuses_redacted_arguments_unless_they_are_edited(
    send_task, django_capture_on_commit_callbacks
):
    record = started(
        send_task,
        django_capture_on_commit_callbacks,
        name="tests.effect",
        kwargs={"key": "k", "token": "t"},
    )
    services.mark_failed(record.celery_id, error="boom")
    record.refresh_from_db()

    with pytest.raises(services.InvalidTransition, match="redacted"):
        services.retry(record)
    with django_capture_on_commit_callbacks(execute=True):
        services.retry(record, kwargs={"key": "k", "token": "new"})

    record.refresh_from_db()
    assert record.state == State.PENDING
    assert send_task.call_args.kwargs["kwargs"] == {"key": "k", "token": "new"}
    assert record.kwargs == {"key": "k", "token": "[redacted]"}  # never stored


def test_a_late_success_after_a_cancel_leaves_the_record_revoked(
    send_task, django_capture_on_commit_callbacks, revoke
):
    record = started(send_task, django_capture_on_commit_callbacks)
    services.mark_revoked(record.celery_id, reason="terminated")

    services.mark_succeeded(record.celery_id)

    record.refresh_from_db()
    assert record.state == State.REVOKED
    assert kinds(record) == ["queued", "started", "cancelled"]


def test_a_success_after_a_failure_changes_nothing(
    send_task, django_capture_on_commit_callbacks
):
    record = started(send_task, django_capture_on_commit_callbacks)
    services.mark_failed(record.celery_id, error="boom", traceback="tb")

    assert services.mark_succeeded(record.celery_id) is False
    assert services.mark_retry(record.celery_id, error="late") is False

    record.refresh_from_db()
    assert record.state == State.FAILURE
    assert record.traceback == "tb"
    assert kinds(record) == ["queued", "started", "failed"]


def test_mark_started_refuses_a_cancelled_record(
    send_task, django_capture_on_commit_callbacks, revoke
):
    record = submitted(send_task, django_capture_on_commit_callbacks)
    TaskRecord.objects.filter(pk=record.pk).update(cancel_requested=True)

    refusal = services.mark_started(record.celery_id, name=record.name, worker="w1")

    record.refresh_from_db()
    assert refusal == "cancelled"
    assert record.state == State.REVOKED
    assert record.attempts == 0


def test_mark_started_refuses_a_redelivery_of_a_finished_record(
    send_task, django_capture_on_commit_callbacks
):
    record = started(send_task, django_capture_on_commit_callbacks)
    services.mark_succeeded(record.celery_id)

    refusal = services.mark_started(record.celery_id, name=record.name, worker="w2")

    record.refresh_from_db()
    assert refusal == "finished"
    assert record.state == State.SUCCESS
    assert record.worker == "w1"
    assert record.attempts == 1


def test_a_delivery_past_the_limit_is_refused_as_poisoned_and_fails(
    send_task, django_capture_on_commit_callbacks, settings
):
    settings.CLAW_MAX_REDELIVERIES = 2
    record = submitted(
        send_task, django_capture_on_commit_callbacks, name="tests.kill_self"
    )
    # tests.kill_self has max_retries=0: one run plus two redeliveries may start.
    # Each run's process dies, and its worker releases the lease (LedgerRequest).
    results = []
    for n in range(4):
        runner = f"w:{n}:token"
        results.append(
            services.mark_started(
                record.celery_id, name=record.name, worker="w", runner=runner
            )
        )
        services.release_lease(record.celery_id, holder=f"w:{n}:")

    record.refresh_from_db()
    assert results == [None, None, None, "poisoned"]
    assert record.state == State.FAILURE
    assert "3 deliveries" in record.error
    assert services.mark_started(record.celery_id, name=record.name, worker="w") == (
        "finished"
    )


def test_cancel_of_a_pending_record_revokes_it_at_once_without_terminating(
    send_task, django_capture_on_commit_callbacks, revoke
):
    record = submitted(send_task, django_capture_on_commit_callbacks)

    with django_capture_on_commit_callbacks(execute=True):
        record = services.cancel(record)

    assert record.state == State.REVOKED
    assert record.cancel_requested
    revoke.assert_called_once_with(record.celery_id, terminate=False)
    assert kinds(record) == ["queued", "cancelled"]


def test_cancel_of_a_running_record_sets_the_flag_and_broadcasts_terminate(
    send_task, django_capture_on_commit_callbacks, revoke
):
    record = started(send_task, django_capture_on_commit_callbacks)

    with django_capture_on_commit_callbacks(execute=True):
        record = services.cancel(record)

    assert record.state == State.STARTED  # the worker's revoked signal finishes it
    assert record.cancel_requested
    revoke.assert_called_once_with(record.celery_id, terminate=True)
    assert services.record_progress(record.celery_id, 1, 2) is False
    services.mark_succeeded(record.celery_id)  # the run finished anyway
    record.refresh_from_db()
    assert record.state == State.REVOKED
    with pytest.raises(services.InvalidTransition):
        services.cancel(record)


def test_retry_of_a_failure_gets_a_new_celery_id_and_keeps_old_events(
    send_task, django_capture_on_commit_callbacks
):
    record = started(send_task, django_capture_on_commit_callbacks, args=[1, 2])
    services.mark_failed(record.celery_id, error="boom")
    old_id = record.celery_id

    with django_capture_on_commit_callbacks(execute=True):
        record = services.retry(record, args=[5, 6])

    assert record.celery_id != old_id
    assert record.state == State.PENDING
    assert record.args == [5, 6]
    assert send_task.call_args.kwargs["task_id"] == record.celery_id
    assert send_task.call_args.kwargs["args"] == [5, 6]
    assert kinds(record) == ["queued", "started", "failed", "queued"]
    assert record.events.filter(celery_id=old_id).count() == 3
    # A late signal for the old attempt no longer touches the record.
    assert services.mark_succeeded(old_id) is False


def test_retry_of_an_active_record_is_refused(
    send_task, django_capture_on_commit_callbacks
):
    record = started(send_task, django_capture_on_commit_callbacks)
    with pytest.raises(services.InvalidTransition):
        services.retry(record)


def test_a_retry_after_a_cancel_ends_revoked_instead_of_waiting_in_started(
    send_task, django_capture_on_commit_callbacks, revoke
):
    record = started(send_task, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        services.cancel(record)

    services.mark_retry(record.celery_id, error="Flaky()")

    record.refresh_from_db()
    assert record.state == State.REVOKED
    refusal = services.mark_started(record.celery_id, name=record.name, worker="w")
    assert refusal == "cancelled"


def test_a_success_signal_for_a_record_nobody_cancelled_never_marks_it_revoked(
    send_task, django_capture_on_commit_callbacks
):
    # The STARTED write was lost (say the database blinked during prerun).
    record = submitted(send_task, django_capture_on_commit_callbacks)

    services.mark_succeeded(record.celery_id)

    record.refresh_from_db()
    assert record.state == State.PENDING
    assert not record.cancel_requested
    assert kinds(record) == ["queued"]


def test_republishing_from_the_stored_copy_never_sends_redacted_secrets(
    send_task, django_capture_on_commit_callbacks
):
    record = submitted(
        send_task,
        django_capture_on_commit_callbacks,
        name="tests.effect",
        kwargs={"key": "k", "password": "pw"},
    )
    plain = submitted(send_task, django_capture_on_commit_callbacks, args=[1, 2])
    send_task.reset_mock()

    assert services.publish(record) is False
    assert not send_task.called
    assert services.publish(plain) is True
    assert send_task.call_args.kwargs["args"] == [1, 2]


def statements(context) -> list[str]:
    return [q["sql"] for q in context.captured_queries]


def test_each_worker_transition_is_one_statement_with_its_update_and_event_insert(
    send_task, django_capture_on_commit_callbacks, django_assert_num_queries
):
    # On PostgreSQL a transition is one data-modifying CTE: the conditional UPDATE
    # ... RETURNING feeds the event INSERT, so it is atomic without a transaction
    # of its own, and one round trip and one commit in a worker (autocommit).
    record = submitted(send_task, django_capture_on_commit_callbacks)
    celery_id = record.celery_id
    services.registered_tasks()  # imported once per process, not per transition

    with django_assert_num_queries(1) as started_queries:
        services.mark_started(celery_id, name="tests.add", worker="w1")
    with django_assert_num_queries(1) as progress_queries:
        services.record_progress(celery_id, 1, 2, "half")
    with django_assert_num_queries(1) as success_queries:
        services.mark_succeeded(celery_id)

    for context in (started_queries, progress_queries, success_queries):
        (sql,) = statements(context)
        assert sql.startswith('WITH moved AS (UPDATE "tasks_app_taskrecord"')
        assert 'INSERT INTO "tasks_app_taskevent"' in sql
    record.refresh_from_db()
    assert record.state == State.SUCCESS
    assert kinds(record) == ["queued", "started", "progress", "succeeded"]


def test_a_transition_that_does_not_apply_writes_no_event(
    send_task, django_capture_on_commit_callbacks
):
    record = submitted(send_task, django_capture_on_commit_callbacks)

    assert services.mark_succeeded(record.celery_id) is False  # never started

    record.refresh_from_db()
    assert record.state == State.PENDING
    assert kinds(record) == ["queued"]


def test_submit_is_one_statement_in_the_callers_transaction(
    send_task, django_capture_on_commit_callbacks, django_assert_num_queries
):
    services.registered_tasks()
    with (
        django_capture_on_commit_callbacks(execute=True),
        transaction.atomic(),
        django_assert_num_queries(1) as queries,
    ):
        record = services.submit("tests.add", args=[1, 2])

    (sql,) = statements(queries)
    assert sql.startswith('WITH added AS (INSERT INTO "tasks_app_taskrecord"')
    assert TaskRecord.objects.get(pk=record.pk).celery_id == record.celery_id
    assert kinds(record) == ["queued"]
    assert send_task.call_args.kwargs["headers"] == {"claw_record": record.pk}


def refused(record: TaskRecord) -> list[TaskEvent]:
    return list(record.events.filter(kind=TaskEvent.Kind.REFUSED).order_by("id"))


def test_a_second_delivery_while_the_runners_lease_is_live_is_refused_and_recorded(
    send_task, django_capture_on_commit_callbacks
):
    record = submitted(send_task, django_capture_on_commit_callbacks)
    assert (
        services.mark_started(
            record.celery_id, name=record.name, worker="w1", runner="w1:10:a"
        )
        is None
    )

    refusal = services.mark_started(
        record.celery_id, name=record.name, worker="w2", runner="w2:20:b"
    )

    record.refresh_from_db()
    assert refusal == "duplicate"
    assert (record.state, record.worker, record.runner) == (
        State.STARTED,
        "w1",
        "w1:10:a",
    )
    assert (record.attempts, record.deliveries) == (1, 1)
    assert kinds(record) == ["queued", "started", "refused"]
    (event,) = refused(record)
    assert (event.celery_id, event.worker) == (record.celery_id, "w2")
    assert event.data == {"reason": "duplicate", "running_on": "w1:10:a"}


def test_a_redelivery_takes_over_once_the_lease_lapsed_or_was_released(
    send_task, django_capture_on_commit_callbacks
):
    record = submitted(send_task, django_capture_on_commit_callbacks)
    services.mark_started(record.celery_id, name=record.name, worker="w1", runner="a")
    TaskRecord.objects.filter(pk=record.pk).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )

    assert (
        services.mark_started(
            record.celery_id, name=record.name, worker="w2", runner="w2:20:b"
        )
        is None
    )
    assert services.release_lease(record.celery_id, holder="w2:20:")
    assert (
        services.mark_started(
            record.celery_id, name=record.name, worker="w3", runner="w3:30:c"
        )
        is None
    )

    record.refresh_from_db()
    assert (record.worker, record.runner, record.deliveries) == ("w3", "w3:30:c", 3)
    assert record.lease_until > timezone.now()
    assert refused(record) == []


def test_a_lost_commit_retried_by_its_own_runner_is_not_a_duplicate(
    send_task, django_capture_on_commit_callbacks
):
    record = submitted(send_task, django_capture_on_commit_callbacks)
    for _ in range(2):  # ledger_writes.reconnecting running the same write again
        assert (
            services.mark_started(
                record.celery_id, name=record.name, worker="w1", runner="w1:1:a"
            )
            is None
        )
    assert refused(record) == []


def test_only_the_runner_holding_a_lease_renews_it(
    send_task, django_capture_on_commit_callbacks
):
    record = submitted(send_task, django_capture_on_commit_callbacks)
    services.mark_started(record.celery_id, name=record.name, worker="w", runner="a")
    past = timezone.now() - timedelta(seconds=1)
    TaskRecord.objects.filter(pk=record.pk).update(lease_until=past)

    assert services.renew_leases([record.celery_id], runner="someone-else") == 0
    record.refresh_from_db()
    assert record.lease_until == past
    assert services.renew_leases([record.celery_id], runner="a") == 1
    record.refresh_from_db()
    assert record.lease_until > timezone.now()


@pytest.mark.parametrize("with_header", [True, False])
def test_a_delivery_of_an_earlier_attempt_is_refused_as_stale_and_recorded(
    send_task, django_capture_on_commit_callbacks, with_header
):
    record = started(send_task, django_capture_on_commit_callbacks)
    old_id = record.celery_id
    services.mark_failed(old_id, error="boom")
    with django_capture_on_commit_callbacks(execute=True):
        record = services.retry(record)

    refusal = services.mark_started(
        old_id,
        name=record.name,
        worker="w9",
        runner="w9:9:z",
        record_id=str(record.pk) if with_header else None,
    )

    record.refresh_from_db()
    assert refusal == "stale"
    assert (record.state, record.attempts) == (State.PENDING, 1)
    assert kinds(record) == ["queued", "started", "failed", "queued", "refused"]
    (event,) = refused(record)
    assert (event.celery_id, event.worker) == (old_id, "w9")
    assert event.data == {"reason": "stale", "current": record.celery_id}
    # the current attempt still runs
    assert (
        services.mark_started(record.celery_id, name=record.name, worker="w1") is None
    )


def test_a_delivery_no_record_ever_had_runs_untracked_and_writes_nothing():
    assert (
        services.mark_started("never-published", name="tests.add", worker="w") is None
    )
    assert not TaskEvent.objects.exists()


# --- countdowns past the visibility timeout (celery#2599) ---------------------


def test_a_countdown_past_the_visibility_timeout_is_refused_naming_the_field(
    send_task, django_capture_on_commit_callbacks
):
    from django.conf import settings

    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(services.DelayTooLong, match=r"^countdown: at most") as caught,
    ):
        services.submit("tests.add", args=[1, 2], countdown=3 * timeout)

    assert caught.value.field == "countdown"
    assert not TaskRecord.objects.exists()
    send_task.assert_not_called()


def test_an_eta_past_the_visibility_timeout_is_refused_and_a_near_one_taken(
    send_task, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    limit = services.longest_delay()
    assert limit and limit > 0
    far = timezone.now() + timedelta(seconds=limit + 60)
    with pytest.raises(services.DelayTooLong, match=r"^eta: "):
        services.submit("tests.add", args=[1, 2], eta=far)
    with django_capture_on_commit_callbacks(execute=True):
        near = services.submit("tests.add", args=[1, 2], countdown=limit - 60)

    assert TaskRecord.objects.get() == near and near.eta is not None
    send_task.assert_called_once()


def test_the_filesystem_broker_has_no_visibility_timeout_to_outlive(settings):
    settings.IS_FILESYSTEM_BROKER = True
    assert services.longest_delay() is None
    services.check_delay("countdown", 10**9)  # no error


def test_two_retries_of_a_record_in_one_transaction_send_only_the_last_attempt(
    send_task, django_capture_on_commit_callbacks, revoke
):
    """Each retry registers its publish for the commit; the first attempt is
    gone by then (cancelled, replaced by the second), so only the second may be
    sent, once."""
    record = started(send_task, django_capture_on_commit_callbacks)
    services.mark_failed(record.celery_id, error="boom")
    send_task.reset_mock()

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        services.retry(record)
        first = record.celery_id
        services.cancel(record)
        services.retry(record)

    assert record.celery_id != first
    sent = [c.kwargs["task_id"] for c in send_task.call_args_list]
    assert sent == [record.celery_id]
