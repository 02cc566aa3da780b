"""The task and worker API: auth matrix, filters, conflicts, field errors."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from rest_framework.test import APIClient

from tasks_app import rollups, services, tokens
from tasks_app.models import TaskRecord
from tasks_app.tests.ledger_runs import run

State = TaskRecord.State
pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:
    client = APIClient()
    if user is not None:
        _, key = tokens.issue(user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def record_of(user, state=State.FAILURE, **fields) -> TaskRecord:
    record = TaskRecord.objects.create(
        name="tests.add",
        args=[1, 2],
        owner=user,
        state=state,
        celery_id=f"c-{TaskRecord.objects.count()}",
        **fields,
    )
    services._add_event(record.celery_id, "queued", {})
    return record


OBJECT_ENDPOINTS = [
    ("get", "/api/v1/tasks/{id}/"),
    ("get", "/api/v1/tasks/{id}/events/"),
    ("post", "/api/v1/tasks/{id}/cancel/"),
    ("post", "/api/v1/tasks/{id}/retry/"),
]
STAFF_ENDPOINTS = [
    ("get", "/api/v1/tasks/stats/"),
    ("get", "/api/v1/workers/"),
    ("post", "/api/v1/workers/pool/restart/"),
    ("post", "/api/v1/workers/shutdown/"),
]


@pytest.mark.parametrize(
    "method,url", [("get", "/api/v1/tasks/"), *OBJECT_ENDPOINTS, *STAFF_ENDPOINTS]
)
def test_anonymous_requests_are_refused(method, url, alice):
    record = record_of(alice)
    response = getattr(client_for(None), method)(url.format(id=record.pk))
    assert response.status_code == 401


@pytest.mark.parametrize("method,url", OBJECT_ENDPOINTS)
def test_another_users_task_is_not_found(method, url, alice, bob):
    record = record_of(alice)
    response = getattr(client_for(bob), method)(url.format(id=record.pk), format="json")
    assert response.status_code == 404


@pytest.mark.parametrize("method,url", STAFF_ENDPOINTS)
def test_cluster_endpoints_are_staff_only(method, url, alice):
    response = getattr(client_for(alice), method)(url, format="json")
    assert response.status_code == 403


@pytest.mark.parametrize(
    "url", ["/api/v1/workers/pool/restart/", "/api/v1/workers/shutdown/"]
)
def test_worker_control_needs_the_control_workers_permission(url, staff):
    body = {"worker": "w1@host", "confirm": True}
    with (
        patch("tasks_app.workers.shutdown") as shutdown,
        patch("tasks_app.workers.pool_restart") as restart,
    ):
        response = client_for(staff).post(url, body, format="json")
    assert response.status_code == 403
    shutdown.assert_not_called()
    restart.assert_not_called()


def test_staff_sees_everyones_tasks_and_users_only_their_own(alice, bob, staff):
    mine, theirs = record_of(alice), record_of(bob)
    ids = [r["id"] for r in client_for(alice).get("/api/v1/tasks/").json()["results"]]
    assert ids == [mine.pk]
    all_ids = [
        r["id"] for r in client_for(staff).get("/api/v1/tasks/").json()["results"]
    ]
    assert all_ids == [theirs.pk, mine.pk]  # newest first
    assert client_for(staff).get(f"/api/v1/tasks/{mine.pk}/").status_code == 200


def test_list_filters_by_state_and_rejects_unknown_states(alice):
    record_of(alice, State.SUCCESS)
    failed = record_of(alice, State.FAILURE)
    api = client_for(alice)
    results = api.get("/api/v1/tasks/?state=FAILURE").json()["results"]
    assert [r["id"] for r in results] == [failed.pk]
    bad = api.get("/api/v1/tasks/?state=DONE")
    assert bad.status_code == 400 and "state" in bad.json()
    bad_date = api.get("/api/v1/tasks/?created_after=yesterday")
    assert bad_date.status_code == 400 and "created_after" in bad_date.json()


def test_detail_shows_celery_state_progress_and_links(alice):
    record = record_of(alice, State.STARTED, progress_current=1, progress_total=4)
    body = client_for(alice).get(f"/api/v1/tasks/{record.pk}/").json()
    assert body["state"] == "STARTED"
    assert body["progress"] == {"current": 1, "total": 4, "message": "", "percent": 25}
    assert body["links"]["events"] == f"/api/v1/tasks/{record.pk}/events/"


def test_events_can_be_polled_after_an_id(alice):
    record = record_of(alice)
    services._add_event(record.celery_id, "failed", {"error": "x"})
    api = client_for(alice)
    events = api.get(f"/api/v1/tasks/{record.pk}/events/").json()["results"]
    assert [e["kind"] for e in events] == ["queued", "failed"]
    later = api.get(f"/api/v1/tasks/{record.pk}/events/?after={events[0]['id']}")
    assert [e["kind"] for e in later.json()["results"]] == ["failed"]
    assert api.get(f"/api/v1/tasks/{record.pk}/events/?after=x").status_code == 400


def test_retry_answers_202_then_409(alice, django_capture_on_commit_callbacks):
    record = record_of(alice, State.FAILURE)
    api = client_for(alice)
    with (
        patch("tasks_app.services.app.send_task") as send_task,
        django_capture_on_commit_callbacks(execute=True),
    ):
        first = api.post(f"/api/v1/tasks/{record.pk}/retry/")
    assert first.status_code == 202 and first.json()["state"] == "PENDING"
    assert send_task.call_args.kwargs["args"] == [1, 2]  # the stored arguments
    second = api.post(f"/api/v1/tasks/{record.pk}/retry/")
    assert second.status_code == 409


@pytest.mark.parametrize(
    "body,named",
    [
        ({"args": [5, 6]}, ["args"]),
        ({"kwargs": {"x": 1}}, ["kwargs"]),
        ({"args": [], "kwargs": {}}, ["args", "kwargs"]),
        ({"args": None}, ["args"]),
    ],
)
def test_only_staff_may_retry_with_other_arguments(alice, body, named):
    record = record_of(alice, State.FAILURE)
    with patch("tasks_app.services.app.send_task") as send_task:
        response = client_for(alice).post(
            f"/api/v1/tasks/{record.pk}/retry/", body, format="json"
        )
    assert response.status_code == 403
    assert sorted(response.json()) == named
    assert "Only staff" in response.json()[named[0]][0]
    record.refresh_from_db()
    assert (record.state, record.args, record.kwargs) == (State.FAILURE, [1, 2], {})
    send_task.assert_not_called()


def test_staff_retry_with_edited_arguments(
    alice, staff, django_capture_on_commit_callbacks
):
    record = record_of(alice, State.FAILURE)
    with (
        patch("tasks_app.services.app.send_task") as send_task,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = client_for(staff).post(
            f"/api/v1/tasks/{record.pk}/retry/", {"args": [5, 6]}, format="json"
        )
    assert response.status_code == 202 and response.json()["state"] == "PENDING"
    assert send_task.call_args.kwargs["args"] == [5, 6]
    record.refresh_from_db()
    assert record.args == [5, 6]


def test_retry_with_badly_typed_arguments_names_the_field(alice, staff):
    record = record_of(alice, State.FAILURE)
    response = client_for(staff).post(
        f"/api/v1/tasks/{record.pk}/retry/", {"args": "not a list"}, format="json"
    )
    assert response.status_code == 400 and "args" in response.json()
    record.refresh_from_db()
    assert record.state == State.FAILURE  # nothing half-written


def test_retry_of_a_running_task_is_409_whatever_its_body(alice):
    record = record_of(alice, State.PENDING)
    response = client_for(alice).post(
        f"/api/v1/tasks/{record.pk}/retry/", {"args": "not a list"}, format="json"
    )
    assert response.status_code == 409


def test_retry_arguments_with_nul_characters_are_stored_redacted(alice, staff):
    # jsonb cannot store U+0000: the stored copy is redacted, the message has it
    record = record_of(alice, State.FAILURE)
    with patch("tasks_app.services.app.send_task"):
        response = client_for(staff).post(
            f"/api/v1/tasks/{record.pk}/retry/",
            {"kwargs": {"a": ["ok", "n\x00l"], "k\x00": 1}},
            format="json",
        )
    assert response.status_code == 202
    record.refresh_from_db()
    assert record.kwargs == {"a": ["ok", "[redacted]"], "k\ufffd": "[redacted]"}


def test_cancel_answers_202_then_409(alice):
    record = record_of(alice, State.PENDING)
    api = client_for(alice)
    with patch("tasks_app.workers.revoke"):
        assert api.post(f"/api/v1/tasks/{record.pk}/cancel/").status_code == 202
        assert api.post(f"/api/v1/tasks/{record.pk}/cancel/").status_code == 409
    record.refresh_from_db()
    assert record.state == State.REVOKED


def test_stats_count_by_state_and_name_from_the_rollups(staff, alice, settings):
    settings.CLAW_STATS_CACHE_SECONDS = 0
    run("succeeded", owner=alice)
    run("failed", owner=alice)
    rollups.fold()
    with patch("tasks_app.workers.queue_lengths", return_value={"default": 3}):
        body = client_for(staff).get("/api/v1/tasks/stats/?hours=1").json()
    assert body["by_state"] == {
        "PENDING": 2,
        "STARTED": 2,
        "SUCCESS": 1,
        "FAILURE": 1,
    }
    assert body["by_name"]["tests.add"]["total"] == 2
    assert body["by_name"]["tests.add"]["failed"] == 1
    assert body["by_queue"] == {"default": {"sent": 2, "finished": 2}}
    assert body["failure_rate"] == 0.5
    assert body["queues"] == {"default": 3}
    assert client_for(staff).get("/api/v1/tasks/stats/?hours=0").status_code == 400


def test_shutdown_needs_a_worker_and_confirm(operator):
    api = client_for(operator)
    answer = {"w1": {"ok": "shutting down"}}
    with patch("tasks_app.workers.shutdown", return_value=answer) as shutdown:
        missing = api.post("/api/v1/workers/shutdown/", {"worker": "w1"}, format="json")
        unconfirmed = api.post(
            "/api/v1/workers/shutdown/",
            {"worker": "w1", "confirm": False},
            format="json",
        )
        shutdown.assert_not_called()
        done = api.post(
            "/api/v1/workers/shutdown/",
            {"worker": "w1", "confirm": True},
            format="json",
        )
    assert missing.status_code == 400 and "confirm" in missing.json()
    assert unconfirmed.status_code == 400 and "confirm" in unconfirmed.json()
    assert done.status_code == 202
    shutdown.assert_called_once_with(["w1"])


def test_schema_and_docs_are_served(staff):
    api = client_for(staff)
    schema = api.get("/api/schema/")
    assert schema.status_code == 200 and b"/api/v1/tasks/{id}/cancel/" in schema.content
    assert api.get("/api/docs/").status_code == 200


def test_requests_past_the_user_rate_get_429_with_retry_after(django_user_model):
    from django.core.cache import cache
    from rest_framework.throttling import UserRateThrottle

    cache.clear()
    user = django_user_model.objects.create_user("busy", password="busy-pass-1")
    api = client_for(user)
    with patch.dict(UserRateThrottle.THROTTLE_RATES, {"user": "2/min"}):
        codes = [api.get("/api/v1/tasks/").status_code for _ in range(3)]
        limited = api.get("/api/v1/tasks/")
    assert codes == [200, 200, 429]
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
    cache.clear()
