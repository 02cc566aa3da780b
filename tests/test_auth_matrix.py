"""Every operation of the OpenAPI schema against the access rules, so a new
endpoint cannot slip past them: anonymous gets 401; another user gets 404 for an
object that is not theirs; the owner and staff get through; worker control and
cluster-wide stats are staff-only (403 for everyone else); so is sending a task's
arguments (a retry's args and kwargs).

Notifications are the one exception: an inbox, where staff too see only
their own. "Gets through" means the answer is not 401, 403 or 404: a 400 for the empty body
sent here still shows that access was granted. Submissions are recorded but not
published (the ledger's publish seam), and worker control is not broadcast.
"""

from __future__ import annotations

import re
from unittest.mock import patch

import pytest
from drf_spectacular.generators import SchemaGenerator

from claw import conversations
from claw.models import Notification
from knowledge import services as knowledge
from tasks_app import services as ledger
from tasks_app.models import TaskRecord
from tasks_app.tests.test_api import client_for
from writing import jobs

pytestmark = pytest.mark.django_db
STAFF_ONLY = {
    ("get", "/api/v1/tasks/stats/"),
    ("get", "/api/v1/workers/"),
    ("post", "/api/v1/workers/pool/restart/"),
    ("post", "/api/v1/workers/shutdown/"),
}
DENIED = (401, 403, 404)
# Notifications are an inbox: staff too see only their own (README, REST API).
INBOX = "/api/v1/notifications/{id}/"
# The object each path parameter names, by the path's first segment.
OBJECT_OF = {
    "tasks": "task",
    "conversations": "conversation",
    "messages": "message",
    "notifications": "notification",
    "knowledge-bases": "kb",
    "documents": "document",
    "jobs": "job",
}


def operations(streams: bool = False) -> list[tuple[str, str]]:
    """The schema's operations; the Server-Sent Events streams apart (streams=True):
    async views that read the database from other threads, which do not see this
    module's uncommitted test data. tests/streams/test_stream_access.py holds them
    to the same rules against a real ASGI server."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return sorted(
        (method, path)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
        and path.endswith("/stream/") == streams
    )


OPERATIONS = operations()
OBJECT_OPERATIONS = [op for op in OPERATIONS if "{" in op[1]]


@pytest.fixture(autouse=True)
def quiet():
    # nothing reaches the broker or a worker
    with (
        patch.object(ledger, "publish", return_value=True),
        patch.object(ledger, "publish_many", return_value=True),
        patch("tasks_app.workers.cluster", return_value=[]),
        patch("tasks_app.workers.queue_lengths", return_value={}),
        patch("tasks_app.workers.pool_restart", return_value={"w@h": {"ok": "x"}}),
        patch("tasks_app.workers.shutdown", return_value={"w@h": {"ok": "x"}}),
    ):
        yield


@pytest.fixture
def objects(alice) -> dict[str, object]:
    """One object of each kind, all alice's, as their path parameter values."""
    chat = conversations.create_conversation(alice, title="Chat")
    reply = conversations.post_message(chat, "q").assistant_message
    kb = knowledge.create_knowledge_base(alice, name="KB")
    document = knowledge.add_document(kb, title="D", content="Text.", vectorize=False)
    task = ledger.submit("tests.add", args=[1, 2], owner=alice)
    return {
        "task": task.pk,
        "conversation": chat.pk,
        "message": reply.pk,
        "notification": Notification.objects.create(
            recipient=alice, channel="system", subject="Hi"
        ).pk,
        "kb": kb.pk,
        "document": document.pk,
        "job": jobs.start_outline_job(
            alice, task_prompt="t", knowledge_bases=[kb], job_id="plan"
        ).job.job_id,
    }


def url_of(path: str, objects: dict) -> str:
    name = OBJECT_OF[path.split("/")[3]]
    return re.sub(r"\{[^}]+\}", str(objects[name]), path)


def call(user, method: str, url: str):
    return getattr(client_for(user), method)(url, {}, format="json")


def test_the_schema_lists_every_kind_of_endpoint():
    prefixes = {path.split("/")[3] for _, path in OPERATIONS}
    assert prefixes == set(OBJECT_OF) | {"workers"}
    assert set(OPERATIONS) >= STAFF_ONLY
    assert len(OBJECT_OPERATIONS) >= 25


@pytest.mark.parametrize("method,path", OPERATIONS)
def test_anonymous_is_refused_everywhere(method, path, objects):
    url = url_of(path, objects) if "{" in path else path

    assert call(None, method, url).status_code == 401


@pytest.mark.parametrize("method,path", OBJECT_OPERATIONS)
def test_another_user_gets_404_for_any_object_and_changes_nothing(
    method, path, objects, bob
):
    tasks_before = TaskRecord.objects.count()

    assert call(bob, method, url_of(path, objects)).status_code == 404
    assert TaskRecord.objects.count() == tasks_before  # nothing submitted


@pytest.mark.parametrize("method,path", OBJECT_OPERATIONS)
def test_the_owner_gets_through_to_any_of_their_objects(method, path, objects, alice):
    answer = call(alice, method, url_of(path, objects))

    assert answer.status_code not in DENIED, answer.content


@pytest.mark.parametrize("method,path", OBJECT_OPERATIONS)
def test_staff_get_through_to_anyones_objects_but_inboxes(method, path, objects, staff):
    answer = call(staff, method, url_of(path, objects))

    if path.startswith(INBOX):
        assert answer.status_code == 404
    else:
        assert answer.status_code not in DENIED, answer.content


@pytest.mark.parametrize("method,path", sorted(STAFF_ONLY))
def test_cluster_endpoints_are_staff_only(method, path, alice, staff, operator):
    assert call(alice, method, path).status_code == 403
    # worker control also needs tasks_app.control_workers (README, Admin)
    allowed = operator if path.startswith("/api/v1/workers/") else staff
    assert call(allowed, method, path).status_code not in DENIED


@pytest.mark.parametrize(
    "method,path",
    [op for op in OPERATIONS if "{" not in op[1] and op not in STAFF_ONLY],
)
def test_every_user_reaches_the_collection_endpoints(method, path, alice, staff):
    for user in (alice, staff):
        answer = call(user, method, path)
        assert answer.status_code not in DENIED, answer.content


# Collection endpoints whose body names an object (not in the path): another
# user's is a 404 naming the field, and nothing is written.
BODY_OBJECTS = {
    ("post", "/api/v1/documents/"): lambda kb: {
        "knowledge_base": kb, "title": "T", "content": "Text."},
    ("post", "/api/v1/documents/bulk/"): lambda kb: {
        "knowledge_base": kb, "documents": [{"title": "T", "content": "Text."}]},
}  # fmt: skip


@pytest.mark.parametrize("method,path", sorted(BODY_OBJECTS))
def test_another_users_object_named_in_a_body_is_a_404(
    method, path, objects, alice, bob, staff
):
    from knowledge.models import Document

    body = BODY_OBJECTS[(method, path)](objects["kb"])
    documents, tasks = Document.objects.count(), TaskRecord.objects.count()

    refused = getattr(client_for(bob), method)(path, body, format="json")
    assert refused.status_code == 404
    assert "knowledge_base" in refused.json()
    assert (Document.objects.count(), TaskRecord.objects.count()) == (documents, tasks)
    for user in (alice, staff):
        answer = getattr(client_for(user), method)(path, body, format="json")
        assert answer.status_code == 201, answer.content


def argument_operations() -> list[tuple[str, str]]:
    """Operations whose request body can carry a task's args or kwargs."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    components = schema["components"]["schemas"]
    found = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            ref = content.get("application/json", {}).get("schema", {}).get("$ref")
            body = components.get(str(ref).rsplit("/", 1)[-1], {})
            if {"args", "kwargs"} & set(body.get("properties", {})):
                found.append((method, path))
    return sorted(found)


@pytest.mark.parametrize("method,path", argument_operations())
def test_only_staff_send_a_tasks_arguments(method, path, objects, alice, staff):
    # A user's retry reruns the stored arguments: new ones could name another
    # user's objects (tests/test_argument_ownership.py). Staff may edit them.
    TaskRecord.objects.filter(pk=objects["task"]).update(state=TaskRecord.State.FAILURE)
    url = url_of(path, objects)
    body = {"args": [3, 4], "kwargs": {}}

    refused = getattr(client_for(alice), method)(url, body, format="json")
    assert refused.status_code == 403
    assert sorted(refused.json()) == ["args", "kwargs"]
    assert TaskRecord.objects.get(pk=objects["task"]).args == [1, 2]

    allowed = getattr(client_for(staff), method)(url, body, format="json")
    assert allowed.status_code not in DENIED, allowed.content
    assert TaskRecord.objects.get(pk=objects["task"]).args == [3, 4]


def test_the_retry_is_among_the_operations_that_take_arguments():
    assert ("post", "/api/v1/tasks/{id}/retry/") in argument_operations()
