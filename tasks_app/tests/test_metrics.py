"""/metrics: who may read it, and that its numbers are the rollups' and the
ledger's (the real-worker version is tests/lifecycle/test_metrics_worker.py)."""

from __future__ import annotations

from datetime import timedelta
from unittest.mock import patch

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tasks_app import rollups
from tasks_app.models import BeatLease, StaffAlert
from tasks_app.tests.ledger_runs import run

pytestmark = pytest.mark.django_db
TOKEN = "s3cret-metrics-token"


def scrape(client: Client | None = None, **headers) -> dict[str, dict]:
    """{metric sample name: {labels tuple: value}} of a GET /metrics."""
    client = client or Client()
    headers = headers or {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    with (
        patch("tasks_app.workers.queue_lengths", return_value={"default": 7}),
        patch("tasks_app.workers.ping", return_value=["w1@a", "w2@b"]),
    ):
        response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    samples: dict[str, dict] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def le(labels: tuple, bound: str) -> tuple:
    return tuple(sorted([*labels, ("le", bound)]))


@pytest.fixture(autouse=True)
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    from django.core.cache import cache

    cache.delete("claw:metrics:workers")


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", f"Token {TOKEN}", "Bearer ", f"Bearer {TOKEN}x"],
)
def test_anyone_without_the_token_or_a_staff_session_gets_401(header, alice):
    client = Client()
    client.force_login(alice)  # a signed-in user who is not staff
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.get("/metrics", **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"celery_" not in response.content


def test_an_empty_token_setting_lets_no_bearer_in(settings):
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


def test_a_staff_session_may_read_it(admin_client):
    samples = scrape(admin_client, HTTP_ACCEPT="text/plain")
    assert samples["celery_active_worker_count"][()] == 2


def test_counters_and_histograms_are_the_rollups():
    for outcome in ("succeeded", "succeeded", "failed", "retried", "revoked", "lost"):
        run(outcome, runtime=0.3, wait=2.0)
    run("succeeded", name="tests.sleep", queue="knowledge_default", runtime=40)
    rollups.fold()

    samples = scrape()

    add = (("name", "tests.add"), ("queue_name", "default"))
    expected = {
        "celery_task_sent_total": 6,
        "celery_task_started_total": 6,
        "celery_task_succeeded_total": 3,
        "celery_task_failed_total": 1,
        "celery_task_retried_total": 1,
        "celery_task_revoked_total": 1,
        "claw_tasks_lost_total": 1,
    }
    assert {name: samples[name][add] for name in expected} == expected
    # run time: the 4 runs that ended with a result (3 succeeded, 1 failed)
    assert samples["celery_task_runtime_seconds_count"][add] == 4
    assert samples["celery_task_runtime_seconds_sum"][add] == pytest.approx(1.2)
    assert samples["celery_task_runtime_seconds_bucket"][le(add, "0.25")] == 0
    assert samples["celery_task_runtime_seconds_bucket"][le(add, "0.5")] == 4
    assert samples["claw_task_wait_seconds_count"][add] == 6
    assert samples["claw_task_wait_seconds_bucket"][le(add, "2.5")] == 6
    sleep = (("name", "tests.sleep"), ("queue_name", "knowledge_default"))
    assert samples["celery_task_runtime_seconds_bucket"][le(sleep, "30.0")] == 0
    assert samples["celery_task_runtime_seconds_bucket"][le(sleep, "60.0")] == 1
    assert samples["celery_queue_length"][(("queue_name", "default"),)] == 7
    assert samples["celery_worker_up"][(("hostname", "w1@a"),)] == 1


def test_gauges_read_the_ledger():
    run("started")  # running, and cancelled: neither is waiting
    run("revoked")
    BeatLease.objects.create(pk=1, last_tick_at=timezone.now() - timedelta(seconds=30))
    StaffAlert.objects.create(key="backlog:default", subject="x", active=True)
    StaffAlert.objects.create(key="old", subject="y", active=False)
    from tasks_app import services

    with patch("tasks_app.services.publish"):
        pending = services.submit("tests.add", args=[1, 2])
    age = (timezone.now() - pending.created_at).total_seconds()

    samples = scrape()

    assert samples["claw_staff_alerts_active"][()] == 1
    assert 29 < samples["claw_beat_last_tick_age_seconds"][()] < 60
    oldest = samples["claw_queue_oldest_age_seconds"][(("queue_name", "default"),)]
    assert age <= oldest < age + 5
    assert (
        samples["claw_queue_oldest_age_seconds"][(("queue_name", "ai_high_priority"),)]
        == 0
    )


def test_beat_that_never_ticked_is_infinitely_old():
    assert scrape()["claw_beat_last_tick_age_seconds"][()] == float("inf")


@pytest.mark.django_db(transaction=True)
def test_a_stale_worker_ping_is_served_while_a_thread_pings_again():
    """A scrape never waits out a ping's timeout once an answer is cached."""
    import time

    from django.core.cache import cache

    from tasks_app import metrics
    from tests.harness import wait_for

    # an earlier test's background ping may still be finishing
    assert metrics._refresh.acquire(timeout=20)
    metrics._refresh.release()
    cache.set(metrics.PING_KEY, {"names": ["old@h"], "at": time.time() - 60}, 600)
    with patch("tasks_app.workers.ping", return_value=["new@h"]) as ping:
        assert metrics.live_workers() == ["old@h"]  # at once, the cached answer
        wait_for(lambda: cache.get(metrics.PING_KEY)["names"] == ["new@h"], 5)
        assert metrics.live_workers() == ["new@h"]  # fresh: no second ping
    assert ping.call_count == 1
    cache.delete(metrics.PING_KEY)  # committed (a transactional test): not left
