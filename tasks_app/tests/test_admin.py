"""The task admin end to end through Django's test client (browser test: tests/browser)."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.urls import reverse

from conftest import OPERATIONS_PERMISSIONS, grant
from tasks_app import rollups, services, workers
from tasks_app.models import TaskRecord
from tasks_app.tests.ledger_runs import run

State = TaskRecord.State
pytestmark = pytest.mark.django_db


def make_record(state=State.FAILURE, **fields) -> TaskRecord:
    record = TaskRecord.objects.create(
        name="tests.add",
        args=[1, 2],
        state=state,
        celery_id=f"id-{TaskRecord.objects.count()}-{state}",
        **fields,
    )
    services._add_event(record.celery_id, "queued", {"queue": "default"})
    return record


def test_changelist_shows_badges_progress_and_links_to_workers(admin_client):
    make_record(State.STARTED, progress_current=3, progress_total=4)
    response = admin_client.get(reverse("admin:tasks_app_taskrecord_changelist"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "claw-badge" in html and "claw-progress" in html
    assert reverse("admin:tasks_app_workers") in html


@pytest.mark.parametrize(
    "query", ["?state__exact=FAILURE", "?queue=default", "?name=tests.add", "?q=1"]
)
def test_changelist_filters_and_search_render(admin_client, query):
    make_record()
    url = reverse("admin:tasks_app_taskrecord_changelist") + query
    assert admin_client.get(url).status_code == 200


def test_detail_shows_arguments_timeline_and_traceback(admin_client):
    record = make_record(error="ValueError('boom')", traceback="Traceback: boom")
    response = admin_client.get(
        reverse("admin:tasks_app_taskrecord_change", args=[record.pk])
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "claw-timeline" in html and "queued" in html
    assert "Traceback: boom" in html
    assert 'name="_save"' not in html  # records change only through services
    assert "&quot;args&quot;: [\n    1," in html or '"args"' in html


def test_retry_action_reports_changed_and_skipped(admin_client):
    failed = make_record(State.FAILURE)
    running = make_record(State.STARTED)
    with patch("tasks_app.services.app.send_task"):
        response = admin_client.post(
            reverse("admin:tasks_app_taskrecord_changelist"),
            {"action": "retry_selected", "_selected_action": [failed.pk, running.pk]},
            follow=True,
        )
    text = response.content.decode()
    assert "Retried 1 task(s); skipped 1 not in an allowed state (1 Started)." in text
    failed.refresh_from_db()
    assert failed.state == State.PENDING


def test_cancel_action_cancels_queued_records(
    admin_client, django_capture_on_commit_callbacks
):
    queued = make_record(State.PENDING)
    with (
        patch("tasks_app.workers.revoke") as revoke,
        django_capture_on_commit_callbacks(execute=True),
    ):
        admin_client.post(
            reverse("admin:tasks_app_taskrecord_changelist"),
            {"action": "cancel_selected", "_selected_action": [queued.pk]},
        )
    queued.refresh_from_db()
    assert queued.state == State.REVOKED
    revoke.assert_called_once_with(queued.celery_id, terminate=False)


def test_workers_page_lists_workers_and_queues(admin_client):
    info = workers.WorkerInfo(name="w1@host", alive=True, pool="prefork", concurrency=2)
    with (
        patch("tasks_app.workers.cluster", return_value=[info]),
        patch("tasks_app.workers.queue_lengths", return_value={"default": 7}),
    ):
        response = admin_client.get(reverse("admin:tasks_app_workers"))
    html = response.content.decode()
    assert "w1@host" in html and "prefork" in html and ">7<" in html


def test_shutdown_needs_confirmation_and_is_logged(admin_client):
    url = reverse("admin:tasks_app_workers_control")
    answer = {"w1@host": {"ok": "shutting down"}}
    with patch("tasks_app.workers.shutdown", return_value=answer) as shutdown:
        admin_client.post(url, {"operation": "shutdown", "worker": "w1@host"})
        shutdown.assert_not_called()
        admin_client.post(
            url, {"operation": "shutdown", "worker": "w1@host", "confirm": "yes"}
        )
    shutdown.assert_called_once_with(["w1@host"])
    assert LogEntry.objects.filter(change_message__contains="shutdown w1@host").exists()


def test_worker_control_refuses_get_and_non_staff(
    client, admin_client, django_user_model
):
    url = reverse("admin:tasks_app_workers_control")
    assert admin_client.get(url).status_code == 405
    django_user_model.objects.create_user("plain", password="x-pass-123")
    client.login(username="plain", password="x-pass-123")
    with patch("tasks_app.workers.shutdown") as shutdown:
        response = client.post(
            url, {"operation": "shutdown", "worker": "w", "confirm": "yes"}
        )
    assert response.status_code == 302 and "/login/" in response["Location"]
    shutdown.assert_not_called()


def test_records_cannot_be_added_by_hand(admin_client):
    response = admin_client.get(reverse("admin:tasks_app_taskrecord_add"))
    assert response.status_code == 403


def finished(state, error="", seconds=1.0) -> TaskRecord:
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    return make_record(
        state, error=error, started_at=now - timedelta(seconds=seconds), finished_at=now
    )


def test_dashboard_reads_the_rollups_and_shows_charts_types_and_queues(
    admin_client, settings
):
    from django.core.cache import cache

    from tasks_app import metrics

    settings.CLAW_STATS_CACHE_SECONDS = 0
    cache.delete(metrics.PING_KEY)  # ping now (patched), not an earlier answer
    run("succeeded", runtime=2.1)
    run("failed")
    run("retried")
    rollups.fold()
    with (
        patch("tasks_app.workers.queue_lengths", return_value={"default": 4}),
        patch("tasks_app.workers.ping", return_value=["w1@host"]),
    ):
        response = admin_client.get(reverse("admin:tasks_app_dashboard"))
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('class="claw-chart"') == 3
    assert "finished, 1 failed</title>" in html  # a slot's values on hover
    assert "failed or lost" in html  # the legend
    assert "w1@host" in html
    assert 'id="types"' in html and "tests.add" in html
    assert "33.3%" in html  # failure rate of tests.add: 1 of 3
    assert "Succeeded" in html and "SUCCESS<" not in html  # one set of names
    assert f"Times in {settings.TIME_ZONE}" in html
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:tasks_app_dashboard") in index


def test_failures_are_grouped_by_normalised_error_and_retried_as_a_group(
    admin_client,
):
    from tasks_app.dashboard import failure_groups, since

    for n in (17, 42, 99):
        finished(State.FAILURE, error=f"KeyError('document {n} not found')")
    finished(State.FAILURE, error="TimeoutError('slow')")
    groups = failure_groups(since(1))
    assert [(g["error"], g["count"]) for g in groups] == [
        ("KeyError('document # not found')", 3),
        ("TimeoutError('slow')", 1),
    ]
    page = admin_client.get(reverse("admin:tasks_app_failures")).content.decode()
    assert "KeyError(&#x27;document # not found&#x27;)" in page
    with patch("tasks_app.services.app.send_task"):
        response = admin_client.post(
            reverse("admin:tasks_app_failures"), {"group": 0}, follow=True
        )
    assert "Retried 3 task(s); skipped 0." in response.content.decode()
    assert TaskRecord.objects.filter(state=State.PENDING).count() == 3
    assert TaskRecord.objects.filter(state=State.FAILURE).count() == 1


def test_new_task_form_validates_json_and_submits_through_services(admin_client):
    url = reverse("admin:tasks_app_new_task")
    assert 'name="name"' in admin_client.get(url).content.decode()
    bad = admin_client.post(
        url, {"name": "tests.add", "args": "[1,", "kwargs": "{}", "priority": 5}
    )
    assert "Not valid JSON" in bad.content.decode()
    wrong_type = admin_client.post(
        url, {"name": "tests.add", "args": "{}", "kwargs": "{}", "priority": 5}
    )
    assert "Must be a JSON list." in wrong_type.content.decode()
    assert not TaskRecord.objects.exists()  # nothing half-written
    with patch("tasks_app.services.app.send_task"):
        response = admin_client.post(
            url,
            {"name": "tests.add", "args": "[2, 3]", "kwargs": "{}", "priority": 9},
        )
    record = TaskRecord.objects.get()
    assert response.status_code == 302
    assert (record.name, record.args, record.priority) == ("tests.add", [2, 3], 9)
    assert record.owner.username == "admin"


def test_edit_and_retry_replaces_arguments(admin_client):
    record = make_record(State.FAILURE)
    url = reverse("admin:tasks_app_edit_and_retry", args=[record.pk])
    detail = reverse("admin:tasks_app_taskrecord_change", args=[record.pk])
    assert url in admin_client.get(detail).content.decode()
    bad = admin_client.post(url, {"args": "not json", "kwargs": "{}"})
    assert "Not valid JSON" in bad.content.decode()
    with patch("tasks_app.services.app.send_task"):
        admin_client.post(url, {"args": "[7, 8]", "kwargs": "{}"})
    record.refresh_from_db()
    assert record.state == State.PENDING and record.args == [7, 8]


def test_schedules_show_next_run_last_outcome_and_run_now_keeps_queue_and_priority(
    admin_client,
):
    from django_celery_beat.models import PeriodicTask

    from tasks_app.schedules import HEALTH

    schedule = PeriodicTask.objects.get(name=HEALTH)
    PeriodicTask.objects.filter(pk=schedule.pk).update(priority=8)
    TaskRecord.objects.create(
        name="tasks_app.check_task_health",
        state=State.SUCCESS,
        celery_id="beat-run-1",
        options={"periodic_task_name": HEALTH},
    )
    html = admin_client.get(
        reverse("admin:django_celery_beat_periodictask_changelist")
    ).content.decode()
    assert "Next run" in html and "Times in Asia/Shanghai" in html  # the one zone
    assert "claw-badge" in html  # the last run's outcome
    # one "run now" (ours, which keeps the owner), next and last run up front
    assert 'value="run_now_selected"' in html and 'value="run_tasks"' not in html
    assert html.index("column-next_run_") < html.index("column-scheduler")
    with patch("tasks_app.services.app.send_task"):
        response = admin_client.post(
            reverse("admin:django_celery_beat_periodictask_changelist"),
            {"action": "run_now_selected", "_selected_action": [schedule.pk]},
            follow=True,
        )
    assert "Sent 1 schedule(s) now; skipped 0." in response.content.decode()
    record = TaskRecord.objects.exclude(celery_id="beat-run-1").get(
        name="tasks_app.check_task_health"
    )
    assert (record.queue, record.priority) == ("default", 8)


def test_actions_apply_to_everything_matching_the_filter(admin_client):
    # Django's "select all" (select_across) applies the action to the whole
    # filtered queryset, not just the page: 60 failures span two pages of 50.
    for _ in range(60):
        make_record(State.FAILURE)
    make_record(State.SUCCESS)
    url = reverse("admin:tasks_app_taskrecord_changelist") + "?state__exact=FAILURE"
    with patch("tasks_app.services.app.send_task"):
        response = admin_client.post(
            url,
            {
                "action": "retry_selected",
                "select_across": "1",
                "index": "0",
                "_selected_action": [TaskRecord.objects.first().pk],
            },
            follow=True,
        )
    assert "Retried 60 task(s); skipped 0." in response.content.decode()
    assert TaskRecord.objects.filter(state=State.SUCCESS).count() == 1


def test_owner_filter_and_children_links(admin_client, admin_user):
    parent = make_record(State.SUCCESS, owner=admin_user)
    child = make_record(State.SUCCESS, parent=parent)
    changelist = reverse("admin:tasks_app_taskrecord_changelist")
    mine = admin_client.get(changelist + "?owner=me").content.decode()
    assert f'value="{parent.pk}"' in mine and f'value="{child.pk}"' not in mine
    nobody = admin_client.get(changelist + "?owner=none").content.decode()
    assert f'value="{child.pk}"' in nobody
    detail = admin_client.get(
        reverse("admin:tasks_app_taskrecord_change", args=[parent.pk])
    ).content.decode()
    assert reverse("admin:tasks_app_taskrecord_change", args=[child.pk]) in detail


def test_live_endpoint_returns_cells_and_the_events_after_one(admin_client):
    from tasks_app.tests.ledger_runs import run

    record = run("started")
    other = run("succeeded", runtime=2.1)
    first = record.events.order_by("id").first()
    url = reverse("admin:tasks_app_live")

    body = admin_client.get(
        url, {"ids": f"{record.pk},{other.pk}", "record": record.pk, "after": first.id}
    ).json()

    assert set(body["tasks"]) == {str(record.pk), str(other.pk)}
    assert "Started" in body["tasks"][str(record.pk)]["state"]
    assert body["tasks"][str(other.pk)]["duration"] == "2.1 s"
    assert body["tasks"][str(other.pk)]["final"] is True
    assert [e["kind"] for e in body["events"]] == ["started"]  # after "queued"
    assert body["events"][0]["at"].count(":") == 2  # in the admin's zone, with ms


@pytest.mark.parametrize("ids", ["1,x", "²", ",".join(["1"] * 201)])
def test_live_endpoint_names_bad_ids(admin_client, ids):
    response = admin_client.get(reverse("admin:tasks_app_live"), {"ids": ids})
    assert response.status_code == 400 and "ids" in response.json()


def test_live_endpoint_is_staff_only(client, alice):
    client.force_login(alice)
    response = client.get(reverse("admin:tasks_app_live"), {"ids": "1"})
    assert response.status_code == 302  # to the admin login, as every admin page


def test_live_pages_carry_the_script_and_their_cells(admin_client):
    record = make_record(State.STARTED, progress_current=1, progress_total=4)
    listing = admin_client.get(reverse("admin:tasks_app_taskrecord_changelist"))
    detail = admin_client.get(
        reverse("admin:tasks_app_taskrecord_change", args=[record.pk])
    )
    for page in (listing, detail):
        html = page.content.decode()
        assert "tasks_app/live.js" in html and "data-claw-live=" in html
        assert f'data-claw-record="{record.pk}" data-claw-field="state"' in html
    assert f'data-claw-timeline="{record.pk}"' in detail.content.decode()


def test_owner_filter_lists_the_signed_in_user_once(admin_client, admin_user, alice):
    html = admin_client.get(
        reverse("admin:tasks_app_taskrecord_changelist")
    ).content.decode()
    assert f"me ({admin_user.username})" in html
    assert f"?owner={admin_user.pk}" not in html  # not a second time by name
    assert f"?owner={alice.pk}" in html


# --- permissions and CSRF of every operation ------------------------------------
# Each operation posts what its page would, and says whether anything changed.


def post_retry_action(client):
    record = make_record(State.FAILURE)
    with patch("tasks_app.services.app.send_task") as send:
        response = client.post(
            reverse("admin:tasks_app_taskrecord_changelist"),
            {"action": "retry_selected", "_selected_action": [record.pk]},
        )
    record.refresh_from_db()
    return response, record.state != State.FAILURE or send.called


def post_cancel_action(client):
    record = make_record(State.PENDING)
    with patch("tasks_app.workers.revoke") as revoke:
        response = client.post(
            reverse("admin:tasks_app_taskrecord_changelist"),
            {"action": "cancel_selected", "_selected_action": [record.pk]},
        )
    record.refresh_from_db()
    return response, record.state != State.PENDING or revoke.called


def post_new_task(client):
    with patch("tasks_app.services.app.send_task"):
        response = client.post(
            reverse("admin:tasks_app_new_task"),
            {"name": "tests.add", "args": "[2, 3]", "kwargs": "{}", "priority": 5},
        )
    return response, TaskRecord.objects.exists()


def post_edit_and_retry(client):
    record = make_record(State.FAILURE)
    with patch("tasks_app.services.app.send_task"):
        response = client.post(
            reverse("admin:tasks_app_edit_and_retry", args=[record.pk]),
            {"args": "[7, 8]", "kwargs": "{}"},
        )
    record.refresh_from_db()
    return response, record.state != State.FAILURE or record.args != [1, 2]


def post_worker_control(client):
    answer = {"w1@host": {"ok": "shutting down"}}
    with patch("tasks_app.workers.shutdown", return_value=answer) as shutdown:
        response = client.post(
            reverse("admin:tasks_app_workers_control"),
            {"operation": "shutdown", "worker": "w1@host", "confirm": "yes"},
        )
    return response, shutdown.called or LogEntry.objects.exists()


def post_failure_group_retry(client):
    finished(State.FAILURE, error="KeyError('x')")
    with patch("tasks_app.services.app.send_task") as send:
        response = client.post(reverse("admin:tasks_app_failures"), {"group": 0})
    changed = TaskRecord.objects.exclude(state=State.FAILURE).exists()
    return response, changed or send.called


def post_run_now(client):
    from django_celery_beat.models import PeriodicTask

    from tasks_app.schedules import HEALTH

    schedule = PeriodicTask.objects.get(name=HEALTH)
    with patch("tasks_app.services.app.send_task"):
        response = client.post(
            reverse("admin:django_celery_beat_periodictask_changelist"),
            {"action": "run_now_selected", "_selected_action": [schedule.pk]},
        )
    return response, TaskRecord.objects.exists()


OPERATIONS = {
    "retry action": (post_retry_action, ["tasks_app.retry_taskrecord"]),
    "cancel action": (post_cancel_action, ["tasks_app.cancel_taskrecord"]),
    "new task": (post_new_task, ["tasks_app.submit_taskrecord"]),
    "edit and retry": (
        post_edit_and_retry,
        ["tasks_app.retry_taskrecord", "tasks_app.submit_taskrecord"],
    ),
    "worker control": (post_worker_control, ["tasks_app.control_workers"]),
    "failure group retry": (post_failure_group_retry, ["tasks_app.retry_taskrecord"]),
    "run now": (post_run_now, ["django_celery_beat.change_periodictask"]),
}
VIEW = ("tasks_app.view_taskrecord", "django_celery_beat.view_periodictask")


def client_of(django_user_model, *perms, **client_options) -> Client:
    """A logged-in staff user who may view the task and schedule lists, plus perms."""
    user = django_user_model.objects.create_user("limited", is_staff=True)
    client = Client(**client_options)
    client.force_login(grant(user, *VIEW, *perms))
    return client


@pytest.mark.parametrize("operation", OPERATIONS)
def test_staff_lacking_an_operations_permission_change_nothing(
    operation, django_user_model
):
    post, needed = OPERATIONS[operation]
    # every permission but one this operation needs
    others = [p for p in OPERATIONS_PERMISSIONS if p != needed[0]]
    response, changed = post(client_of(django_user_model, *others))

    assert not changed
    if "action" in operation or operation == "run now":
        # Django does not offer an action its user may not run ("No action
        # selected.") and runs nothing
        assert response.status_code == 302
    else:
        assert response.status_code == 403


@pytest.mark.parametrize("operation", OPERATIONS)
def test_staff_holding_an_operations_permissions_carry_it_out(
    operation, django_user_model
):
    post, needed = OPERATIONS[operation]
    response, changed = post(client_of(django_user_model, *needed))

    assert response.status_code == 302 and changed


@pytest.mark.parametrize("operation", OPERATIONS)
def test_superusers_carry_out_every_operation(operation, admin_client):
    post, _ = OPERATIONS[operation]
    response, changed = post(admin_client)

    assert response.status_code == 302 and changed


@pytest.mark.parametrize("operation", OPERATIONS)
def test_an_operation_posted_without_a_csrf_token_is_403_and_changes_nothing(
    operation, django_user_model
):
    post, _ = OPERATIONS[operation]
    client = client_of(
        django_user_model, *OPERATIONS_PERMISSIONS, enforce_csrf_checks=True
    )
    response, changed = post(client)

    assert response.status_code == 403 and not changed
    assert b"CSRF" in response.content


def test_pages_offer_only_the_operations_their_user_may_run(django_user_model):
    record = make_record(State.FAILURE, error="KeyError('x')")
    record.finished_at = record.created_at
    record.save(update_fields=["finished_at"])
    client = client_of(django_user_model)
    info = workers.WorkerInfo(
        name="w1@host", alive=True, pool="prefork", controls=["restart", "shutdown"]
    )
    with (
        patch("tasks_app.workers.cluster", return_value=[info]),
        patch("tasks_app.workers.queue_lengths", return_value={}),
    ):
        pages = [
            client.get(reverse("admin:tasks_app_taskrecord_changelist")),
            client.get(reverse("admin:tasks_app_taskrecord_change", args=[record.pk])),
            client.get(reverse("admin:tasks_app_failures")),
            client.get(reverse("admin:tasks_app_workers")),
            client.get(reverse("admin:django_celery_beat_periodictask_changelist")),
        ]
    html = "".join(page.content.decode() for page in pages)

    assert all(page.status_code == 200 for page in pages)
    assert "w1@host" in html and "KeyError" in html
    for offered in (
        "retry_selected",
        "cancel_selected",
        "run_now_selected",
        reverse("admin:tasks_app_new_task"),
        reverse("admin:tasks_app_edit_and_retry", args=[record.pk]),
        reverse("admin:tasks_app_workers_control"),
        "Retry this group",
    ):
        assert offered not in html


def test_new_task_refuses_a_countdown_the_broker_would_redeliver(admin_client):
    from django.conf import settings

    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    url = reverse("admin:tasks_app_new_task")
    with patch("tasks_app.services.app.send_task") as send:
        response = admin_client.post(
            url,
            {
                "name": "tests.add",
                "args": "[1, 2]",
                "kwargs": "{}",
                "priority": 5,
                "countdown": 3 * timeout,
            },
        )

    assert response.status_code == 200  # the form again, with its error
    errors = response.context["form"].errors
    assert list(errors) == ["countdown"] and "at most" in errors["countdown"][0]
    assert not TaskRecord.objects.exists()
    send.assert_not_called()


@pytest.mark.parametrize("group", ["", "x", "-1", "99"])
def test_retrying_a_group_that_is_not_there_says_so_and_changes_nothing(
    admin_client, group
):
    finished(State.FAILURE, error="KeyError('x')")
    with patch("tasks_app.services.app.send_task") as send:
        response = admin_client.post(
            reverse("admin:tasks_app_failures"), {"group": group}, follow=True
        )

    assert "That group no longer exists." in response.content.decode()
    assert TaskRecord.objects.get().state == State.FAILURE
    send.assert_not_called()
