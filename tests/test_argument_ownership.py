"""A user's retry reruns the stored arguments; only staff edit them (issue 15).

Tasks take raw ids (a message, a knowledge base, a writing job). Were a user
free to retry their own record with new arguments, they could point any task
at another user's objects. For every registered task that acts for an owner:

1. through the API, bob cancels his own record of that task and retries it with
   arguments naming alice's object: 403 naming the fields, nothing published,
   alice's data unchanged; his plain retry still reruns his stored arguments;
2. defence in depth: a record of bob's whose stored arguments name alice's
   object (as a staff edit could leave it) run by a real worker fails for good
   with NotOwned, before anything of alice's changes.

The fan-outs' errbacks are called in-process by Celery with the request of the
chord's callback, never from a message: they are checked by calling them so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from unittest.mock import patch

import pytest
from celery.exceptions import ChordError

from claw import conversations
from claw.celery import registered_tasks
from claw.models import Message, Notification
from knowledge import services as knowledge
from knowledge.models import Chunk, Document, KnowledgeBase
from tasks_app import services as ledger
from tasks_app.models import TaskRecord
from tasks_app.ownership import NotOwned
from tasks_app.tests.test_api import client_for
from tests.harness import wait_for
from writing import jobs
from writing.models import WritingJob, WritingSection

State = TaskRecord.State
# Registered tasks that take no user's objects: Celery's canvas primitives, the
# platform's maintenance (ping, cleanup, health check) and the tests' own tasks.
NOT_OWNER_ACTING = ("celery.", "tasks_app.", "tests.")


def owner_acting_tasks() -> set[str]:
    return {n for n in registered_tasks() if not n.startswith(NOT_OWNER_ACTING)}


# --- each user's objects, and alice's data as it stands --------------------------


def a_message(user) -> dict:
    chat = conversations.create_conversation(user, title="Chat")
    reply = conversations.post_message(chat, "What is green tea?").assistant_message
    return {"message": reply.pk}


def message_data(ids: dict):
    return list(Message.objects.filter(pk=ids["message"]).values())


def a_notification(user) -> dict:
    notification = Notification.objects.create(
        recipient=user, channel=Notification.Channel.SYSTEM, subject="Hi"
    )
    return {"notification": notification.pk}


def notification_data(ids: dict):
    return list(Notification.objects.filter(pk=ids["notification"]).values())


def a_knowledge_base(user, *, vectorized: bool = True) -> dict:
    kb = knowledge.create_knowledge_base(user, name="Teas")
    document = knowledge.add_document(
        kb,
        title="Green tea",
        content="Green tea is steamed or pan-fired soon after picking.",
        vectorize=False,
    )
    if vectorized:
        knowledge.vectorize_document(document.pk)  # in-process, no worker
    return {"kb": kb.pk, "document": document.pk}


def a_pending_document(user) -> dict:
    return a_knowledge_base(user, vectorized=False)


def knowledge_data(ids: dict):
    return (
        list(KnowledgeBase.objects.filter(pk=ids["kb"]).values()),
        list(Document.objects.filter(knowledge_base_id=ids["kb"]).values()),
        list(
            Chunk.objects.filter(document__knowledge_base_id=ids["kb"])
            .order_by("id")
            .values("id", "document_id", "content_hash")
        ),
    )


def an_outline_job(user) -> dict:
    kb = a_knowledge_base(user)["kb"]
    job = jobs.start_outline_job(
        user,
        task_prompt="Green tea",
        knowledge_bases=[KnowledgeBase.objects.get(pk=kb)],
        job_id="plan",
    ).job
    return {"job": job.pk}


def a_document_job(user) -> dict:
    document = a_knowledge_base(user)["document"]
    chunk = Chunk.objects.filter(document_id=document).first()
    outline = {
        "title": "Teas",
        "sections": [{"heading": "Green", "passages": [{"chunk_id": chunk.pk}]}],
    }
    return {"job": jobs.start_document_job(user, outline=outline).job.pk}


def job_data(ids: dict):
    return (
        list(WritingJob.objects.filter(pk=ids["job"]).values()),
        list(WritingSection.objects.filter(job_id=ids["job"]).values()),
    )


@dataclass(frozen=True)
class Case:
    make: Callable[[object], dict]  # a user's objects: their ids
    arguments: Callable[[dict], tuple[list, dict]]  # a task's args, kwargs on them
    data: Callable[[dict], object]  # the owner's data, to compare before and after
    errback: bool = False  # called in-process by Celery, never from a message


CASES = {
    "claw.generate_ai_response": Case(
        a_message, lambda o: ([o["message"]], {}), message_data
    ),
    "claw.send_notification": Case(
        a_notification, lambda o: ([o["notification"]], {}), notification_data
    ),
    "knowledge.vectorize_document": Case(
        a_pending_document, lambda o: ([o["document"]], {}), knowledge_data
    ),
    "knowledge.update_knowledge_base": Case(
        a_knowledge_base, lambda o: ([o["kb"], "rebuild"], {}), knowledge_data
    ),
    "knowledge.finish_knowledge_base_update": Case(
        a_knowledge_base,
        lambda o: ([[]], {"kb_id": o["kb"], "mode": "full"}),
        knowledge_data,
    ),
    "knowledge.knowledge_base_update_broken": Case(
        a_knowledge_base, lambda o: ([], {"kb_id": o["kb"]}), knowledge_data, True
    ),
    "knowledge.delete_knowledge_vectors": Case(
        a_knowledge_base, lambda o: ([], {"kb_id": o["kb"]}), knowledge_data
    ),
    "knowledge.generate_outline_from_query": Case(
        an_outline_job, lambda o: ([o["job"]], {}), job_data
    ),
    "knowledge.generate_document_from_outline": Case(
        a_document_job, lambda o: ([o["job"]], {}), job_data
    ),
    "knowledge.write_section": Case(
        a_document_job, lambda o: ([o["job"], 0], {}), job_data
    ),
    "knowledge.finish_document": Case(
        a_document_job, lambda o: ([[]], {"job_pk": o["job"]}), job_data
    ),
    "knowledge.document_chord_broken": Case(
        a_document_job, lambda o: ([], {"job_pk": o["job"]}), job_data, True
    ),
}
QUEUED = sorted(name for name, case in CASES.items() if not case.errback)
ERRBACKS = sorted(name for name, case in CASES.items() if case.errback)


def objects_of(case: Case, user) -> dict:
    # nothing reaches a worker: only the record each test publishes itself runs
    with patch.object(ledger, "publish", return_value=True):
        return case.make(user)


def test_the_cases_cover_every_task_that_acts_for_an_owner():
    assert set(CASES) == owner_acting_tasks()


# --- 1. through the API ------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_user_retrying_with_another_users_object_gets_403_and_nothing_changes(
    name, alice, bob, django_capture_on_commit_callbacks
):
    case = CASES[name]
    theirs = objects_of(case, alice)
    mine = objects_of(case, bob)
    stored_args, stored_kwargs = case.arguments(mine)
    args, kwargs = case.arguments(theirs)
    body = {key: value for key, value in (("args", args), ("kwargs", kwargs)) if value}
    before = case.data(theirs)
    api = client_for(bob)
    with patch.object(ledger, "publish", return_value=True) as publish:
        record = ledger.submit(name, args=stored_args, kwargs=stored_kwargs, owner=bob)
        with patch("tasks_app.workers.revoke"):
            cancelled = api.post(f"/api/v1/tasks/{record.pk}/cancel/")
        publish.reset_mock()
        with django_capture_on_commit_callbacks(execute=True):
            refused = api.post(f"/api/v1/tasks/{record.pk}/retry/", body, format="json")

        assert cancelled.status_code == 202
        assert refused.status_code == 403, refused.content
        assert sorted(refused.json()) == sorted(body)  # names the fields
        publish.assert_not_called()
        record.refresh_from_db()
        assert record.state == State.REVOKED
        assert (record.args, record.kwargs) == (stored_args, stored_kwargs)
        assert case.data(theirs) == before

        # without arguments, his retry reruns his own stored ones
        with django_capture_on_commit_callbacks(execute=True):
            rerun = api.post(f"/api/v1/tasks/{record.pk}/retry/")
        assert rerun.status_code == 202, rerun.content
        sent = publish.call_args.kwargs["payload"]
        assert sent == (stored_args, stored_kwargs)


# --- 2. defence in depth: stored arguments naming another user's object -----------


@pytest.mark.worker
@pytest.mark.parametrize("name", QUEUED)
def test_a_task_acting_for_one_user_on_anothers_object_fails_for_good(
    name, transactional_db, celery_worker, alice, bob
):
    case = CASES[name]
    theirs = objects_of(case, alice)
    args, kwargs = case.arguments(theirs)
    before = case.data(theirs)
    with patch.object(ledger, "publish", return_value=True):
        record = ledger.submit(name, args=args, kwargs=kwargs, owner=bob)

    assert ledger.publish(record)  # its stored arguments, alice's object
    wait_for(
        lambda: record.refresh_from_db() or record.is_final,
        60,
        interval=0.2,
        message=f"{record} to end",
    )

    assert record.state == State.FAILURE, record.error
    assert record.error.startswith("NotOwned("), record.error
    assert record.attempts == 1  # a permanent failure: not retried
    assert case.data(theirs) == before


@pytest.mark.django_db
@pytest.mark.parametrize("name", ERRBACKS)
def test_a_fan_out_errback_for_one_user_refuses_anothers_object(name, alice, bob):
    case = CASES[name]
    theirs = objects_of(case, alice)
    _, kwargs = case.arguments(theirs)
    before = case.data(theirs)
    with patch.object(ledger, "publish", return_value=True):
        parent = ledger.submit("tests.add", args=[1, 2], owner=bob)
    ledger.mark_started(parent.celery_id, name="tests.add", worker="w@h")
    # as Celery calls it: with the request of the chord's callback (the parent's id)
    callback = SimpleNamespace(id=parent.celery_id, kwargs=kwargs)

    with pytest.raises(NotOwned):
        registered_tasks()[name].run(callback, ChordError("a member failed"), None)

    parent.refresh_from_db()
    assert parent.state == State.STARTED  # not ended with alice's documents named
    assert case.data(theirs) == before


@pytest.mark.django_db
@pytest.mark.parametrize("name", ERRBACKS)
def test_a_fan_out_errback_acts_on_its_owners_objects(name, alice):
    case = CASES[name]
    mine = objects_of(case, alice)
    _, kwargs = case.arguments(mine)
    with patch.object(ledger, "publish", return_value=True):
        parent = ledger.submit("tests.add", args=[1, 2], owner=alice)
    ledger.mark_started(parent.celery_id, name="tests.add", worker="w@h")
    callback = SimpleNamespace(id=parent.celery_id, kwargs=kwargs)

    # no NotOwned: the parent's owner owns the objects
    registered_tasks()[name].run(callback, ChordError("a member failed"), None)
