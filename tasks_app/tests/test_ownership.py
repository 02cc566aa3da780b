"""tasks_app.ownership: whose objects a running task may change.

The running task is played by pushing a request onto a registered task, as the
worker does (Celery's task stack); every owner-acting task type is run for real
in tests/test_argument_ownership.py.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from celery._state import _task_stack

from claw.celery import registered_tasks
from tasks_app import ownership
from tasks_app.models import TaskRecord
from tasks_app.ownership import NotOwned, ensure_owned

pytestmark = pytest.mark.django_db


def record_of(owner, celery_id: str, **fields) -> TaskRecord:
    return TaskRecord.objects.create(
        name="tests.add", owner=owner, celery_id=celery_id, **fields
    )


@contextmanager
def running(celery_id: str, **request):
    """The task stack of a worker running the attempt celery_id."""
    task = registered_tasks()["tests.add"]
    task.push_request(id=celery_id, called_directly=False, **request)
    _task_stack.push(task)
    try:
        yield
    finally:
        _task_stack.pop()
        task.pop_request()


def test_a_users_task_may_change_only_that_users_objects(alice, bob):
    record_of(bob, "c-bob")
    with running("c-bob"):
        ensure_owned(bob.pk, bob.pk)
        with pytest.raises(NotOwned, match="knowledge base 7 does not belong"):
            ensure_owned(bob.pk, alice.pk, what="knowledge base 7")
        with pytest.raises(NotOwned):
            ensure_owned(None)  # an object of nobody's is not bob's


def test_nobodys_records_and_staffs_are_not_restricted(alice, staff):
    record_of(None, "c-system")
    record_of(staff, "c-staff")
    for celery_id in ("c-system", "c-staff", "c-unknown"):
        with running(celery_id):
            ensure_owned(alice.pk, None)
    ensure_owned(alice.pk)  # outside a worker: the caller checks access itself


def test_a_canvas_member_acts_for_its_roots_owner(alice, bob):
    root = record_of(bob, "c-update")
    record_of(None, "c-member", root=root)
    with running("c-member"), pytest.raises(NotOwned):
        ensure_owned(alice.pk)
    assert ownership.acting_owner_id("c-member") == bob.pk


def test_a_delivery_of_an_earlier_attempt_is_restricted_too(alice, bob):
    # the record has moved on to a new attempt; its header still names it
    record = record_of(bob, "c-new")
    with running("c-old", claw_record=record.pk), pytest.raises(NotOwned):
        ensure_owned(alice.pk)


def test_the_owner_is_read_once_per_run(bob, django_assert_num_queries):
    record_of(bob, "c-bob")
    with running("c-bob"), django_assert_num_queries(1):
        for _ in range(3):
            ensure_owned(bob.pk)


def test_no_lifecycle_handler_runs_for_a_refused_record(
    bob, monkeypatch, django_capture_on_commit_callbacks
):
    # Handlers act on what the record's arguments name: another user's objects.
    from tasks_app import lifecycle, services

    monkeypatch.setattr(lifecycle, "_registry", lifecycle._Registry())
    called = []
    lifecycle.on_end("tests.add", handler=called.append)
    for celery_id, exc in (("c-refused", NotOwned("x")), ("c-failed", ValueError())):
        record_of(bob, celery_id, state=TaskRecord.State.STARTED)
        with django_capture_on_commit_callbacks(execute=True):
            services.mark_failed(celery_id, error=repr(exc), exc=exc)

    assert [ended.record.celery_id for ended in called] == ["c-failed"]


def test_a_member_reports_only_to_a_parent_of_its_own_owner(alice, bob):
    root = record_of(bob, "c-update")
    record_of(None, "c-member", root=root)
    record_of(alice, "c-alices-update")
    with running("c-member"):
        ownership.ensure_same_owner("c-update")
        ownership.ensure_same_owner("c-retried-since")  # no record: nothing to guard
        with pytest.raises(NotOwned):
            ownership.ensure_same_owner("c-alices-update")
