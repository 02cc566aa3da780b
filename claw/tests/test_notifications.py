"""Notifications: channels against a real local webhook server, staff alerts, the API-less services."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.cache import cache
from django.utils import timezone

from claw import services
from claw.models import Notification
from claw.notifications import PermanentDeliveryError, TransientDeliveryError
from claw.tests.conftest import in_threads
from tasks_app import alerts
from tasks_app import services as ledger
from tasks_app.models import TaskRecord
from tests.harness import wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def user():
    return get_user_model().objects.create_user(
        "ann", email="ann@example.com", password="x"
    )


def make(user, channel):
    return Notification.objects.create(
        recipient=user, channel=channel, subject="Hi", body="Body"
    )


def test_push_webhook_receives_the_notification_as_json_and_it_is_marked_sent(
    user, http_server, settings
):
    settings.NOTIFY_PUSH_WEBHOOK_URL = http_server.url + "/push"
    n = make(user, Notification.Channel.PUSH)
    assert services.send(n.pk, final_attempt=False) == "sent"
    n.refresh_from_db()
    assert (n.status, n.attempts, n.error) == ("sent", 1, "")
    assert n.sent_at is not None
    body = http_server.requests[0]["body"]
    assert http_server.requests[0]["path"] == "/push"
    assert body["subject"] == "Hi" and body["recipient"]["email"] == "ann@example.com"


def test_a_webhook_5xx_is_transient_and_stays_pending_until_the_final_attempt(
    user, http_server, settings
):
    settings.NOTIFY_SMS_WEBHOOK_URL = http_server.url + "/sms"
    http_server.script += [{"status": 502}, {"status": 503}]
    n = make(user, Notification.Channel.SMS)
    with pytest.raises(TransientDeliveryError, match="502"):
        services.send(n.pk, final_attempt=False)
    n.refresh_from_db()
    assert n.status == "pending" and "502" in n.error
    with pytest.raises(TransientDeliveryError):
        services.send(n.pk, final_attempt=True)
    n.refresh_from_db()
    assert (n.status, n.attempts) == ("failed", 2)
    # every try carries the same key, so the receiver can drop repeats
    keys = [r["headers"]["Idempotency-Key"] for r in http_server.requests]
    assert keys == [f"notification-{n.pk}"] * 2


def test_a_webhook_4xx_fails_permanently_with_its_answer(user, http_server, settings):
    settings.NOTIFY_SMS_WEBHOOK_URL = http_server.url + "/sms"
    http_server.script.append({"status": 422, "json": {"detail": "bad phone"}})
    n = make(user, Notification.Channel.SMS)
    with pytest.raises(PermanentDeliveryError):
        services.send(n.pk, final_attempt=False)
    n.refresh_from_db()
    assert n.status == "failed" and "422" in n.error and "bad phone" in n.error


def test_an_unreachable_webhook_is_transient(user, settings):
    settings.NOTIFY_PUSH_WEBHOOK_URL = "http://127.0.0.1:9/push"
    n = make(user, Notification.Channel.PUSH)
    with pytest.raises(TransientDeliveryError, match="unreachable"):
        services.send(n.pk, final_attempt=False)


def test_an_unconfigured_channel_fails_permanently_naming_the_setting(user, settings):
    settings.NOTIFY_PUSH_WEBHOOK_URL = ""
    n = make(user, Notification.Channel.PUSH)
    with pytest.raises(PermanentDeliveryError, match="NOTIFY_PUSH_WEBHOOK_URL"):
        services.send(n.pk, final_attempt=False)
    n.refresh_from_db()
    assert n.status == "failed" and "NOTIFY_PUSH_WEBHOOK_URL" in n.error


def test_email_goes_through_djangos_mail_backend(user):
    n = make(user, Notification.Channel.EMAIL)
    services.send(n.pk, final_attempt=False)
    assert [m.to for m in mail.outbox] == [["ann@example.com"]]
    assert mail.outbox[0].subject == "Hi"


def test_a_sent_notification_is_not_sent_twice_on_redelivery(user):
    n = make(user, Notification.Channel.EMAIL)
    services.send(n.pk, final_attempt=False)
    services.send(n.pk, final_attempt=False)
    assert len(mail.outbox) == 1


def test_notify_records_and_submits_a_task_targeting_the_notification(
    user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        n = services.notify(user, "system", "Subject", "Body")
    record = TaskRecord.objects.get(name="claw.send_notification")
    assert record.object_id == n.pk and record.args == [n.pk] and record.owner == user
    assert record.queue == "notification_default"


def test_notify_rejects_an_unknown_channel(user):
    with pytest.raises(ValueError, match="channel"):
        services.notify(user, "pigeon", "s", "b")
    assert not Notification.objects.exists()


def test_a_burst_of_staff_alerts_with_one_key_sends_one_alert_per_staff_user(
    django_capture_on_commit_callbacks, settings
):
    cache.clear()
    settings.STAFF_ALERT_EMAILS = ["ops@example.com"]
    User = get_user_model()
    User.objects.create_user("boss", is_staff=True)
    User.objects.create_user("boss2", is_staff=True)
    User.objects.create_user("worker")
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(50):
            alerts.notify_staff("Queue stuck", "details", dedupe_key="stuck:default")
        alerts.notify_staff("Other", "details", dedupe_key="other")
    subjects = sorted(
        Notification.objects.values_list("recipient__username", "subject").order_by()
    )
    assert subjects == [
        ("boss", "Other"),
        ("boss", "Queue stuck"),
        ("boss2", "Other"),
        ("boss2", "Queue stuck"),
    ]
    assert [m.to for m in mail.outbox] == [["ops@example.com"], ["ops@example.com"]]


@pytest.mark.django_db(transaction=True)
def test_a_worker_sends_a_system_notification_and_the_ledger_shows_success(
    celery_worker,
):
    user = get_user_model().objects.create_user("wendy")
    n = services.notify(user, "system", "Welcome", "Hello")
    wait_for(
        lambda: Notification.objects.get(pk=n.pk).status == "sent",
        timeout=30,
        message="notification not sent",
    )
    record = TaskRecord.objects.get(name="claw.send_notification", object_id=n.pk)
    wait_for(
        lambda: TaskRecord.objects.get(pk=record.pk).state == "SUCCESS", timeout=10
    )


def test_a_burst_seen_by_processes_with_separate_caches_still_alerts_once(
    django_capture_on_commit_callbacks,
):
    get_user_model().objects.create_user("boss", is_staff=True)
    for _ in range(3):
        # each call as if from another worker process: its own empty locmem cache
        cache.clear()
        alerts.notify_staff("Disk full", "details", dedupe_key="disk")
    assert Notification.objects.filter(subject="Disk full").count() == 1


def test_concurrent_claims_of_one_alert_key_let_exactly_one_send(transactional_db):
    won = in_threads(lambda: alerts.claim("same-key", 900), 6)
    assert sorted(won) == [False] * 5 + [True]


def test_an_alert_key_sends_again_after_its_window(settings):
    settings.STAFF_ALERT_WINDOW = 60
    assert alerts.claim("k", 60) is True
    assert alerts.claim("k", 60) is False
    from tasks_app.models import AlertClaim

    AlertClaim.objects.update(sent_at=timezone.now() - timezone.timedelta(seconds=61))
    assert alerts.claim("k", 60) is True


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_one_failure_in_a_real_worker_sends_staff_one_alert(celery_worker):
    # Eight failures of one task, spread over the worker's pool processes (each
    # with its own locmem cache), make one alert per staff user.
    # The database cache table outlives the test database's flush: an earlier
    # test's (or run's, with --reuse-db) claim on this alert would hide it.
    cache.clear()
    staff = get_user_model().objects.create_user("oncall", is_staff=True)
    records = [ledger.submit("tests.fail", args=["disk on fire"]) for _ in range(8)]
    wait_for(
        lambda: (
            TaskRecord.objects.filter(
                pk__in=[r.pk for r in records], state="FAILURE"
            ).count()
            == 8
        ),
        timeout=30,
        message="every task to fail",
    )
    alerts = Notification.objects.filter(
        recipient=staff, subject="Task tests.fail failed: ValueError"
    )
    wait_for(alerts.exists, timeout=10, message="the alert")
    assert alerts.count() == 1
    # tests.fail has no retries: the alert says so instead of "after its retries"
    body = alerts.get().body
    assert "failed on its first run, without a retry:\nValueError: disk on fire" in body


@pytest.mark.parametrize(
    "retries, wording",
    [
        (0, "failed on its first run, without a retry"),
        (1, "failed after 1 retry"),
        (3, "failed after 3 retries"),
    ],
)
def test_a_staff_alert_says_how_many_retries_the_task_had(retries, wording):
    from types import SimpleNamespace

    from claw import signals

    task = SimpleNamespace(name="tests.flaky", request=SimpleNamespace(retries=retries))
    with patch("tasks_app.alerts.notify_staff") as notify:
        signals.alert_staff_on_task_failure(
            sender=task, task_id="abc", exception=OSError("gone")
        )
    subject, body = notify.call_args.args
    assert body == f"Task tests.flaky (abc) {wording}:\nOSError: gone"
    assert "after its retries" not in body
