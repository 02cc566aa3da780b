from __future__ import annotations

from datetime import timedelta
from unittest.mock import Mock, patch

import pytest
from django.core.cache import cache
from django.utils import timezone

from tasks_app import beat, health
from tasks_app.models import BeatLease
from tasks_app.tests.test_api import client_for


@pytest.mark.django_db
def test_health_names_every_failing_part(admin_client):
    # given no beat has ever ticked and no worker answers
    with patch("tasks_app.workers.ping", return_value=[]):
        response = admin_client.get("/health")

    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["beat", "workers"]
    assert body["database"]["ok"] and body["broker"]["ok"]


@pytest.mark.django_db
def test_health_is_ok_with_a_live_worker_and_a_recent_beat_tick(admin_client):
    assert beat.acquire_lease("beat-1")
    with patch("tasks_app.workers.ping", return_value=["w1@host"]):
        response = admin_client.get("/health")

    assert response.status_code == 200
    assert response.json()["workers"]["live"] == ["w1@host"]


@pytest.mark.django_db
def test_health_reports_a_stale_beat(admin_client, settings):
    BeatLease.objects.create(
        pk=1, holder="old", last_tick_at=timezone.now() - timedelta(seconds=600)
    )
    with patch("tasks_app.workers.ping", return_value=["w1@host"]):
        response = admin_client.get("/health")

    assert response.status_code == 503
    assert response.json()["failing"] == ["beat"]


@pytest.mark.django_db
def test_health_reports_a_broker_that_is_down(admin_client, settings):
    from claw.celery import app

    real = app.connection_for_write

    def closed_port_connection():
        return real("redis://127.0.0.1:1/0")  # nothing listens on port 1

    with (
        patch("tasks_app.workers.ping", return_value=["w1@host"]),
        patch.object(app, "connection_for_write", closed_port_connection),
    ):
        beat.acquire_lease("beat-1")
        response = admin_client.get("/health")

    assert response.status_code == 503
    assert "broker" in response.json()["failing"]
    assert response.json()["broker"]["error"]


@pytest.mark.django_db
def test_a_second_beat_cannot_take_a_live_lease_but_takes_an_expired_one():
    assert beat.acquire_lease("beat-1")
    assert not beat.acquire_lease("beat-2")
    assert beat.acquire_lease("beat-1")  # renewal by the holder
    BeatLease.objects.filter(pk=1).update(expires_at=timezone.now() - timedelta(1))
    assert beat.acquire_lease("beat-2")


@pytest.mark.django_db
@pytest.mark.parametrize("live", [["w1@host"], []])
def test_anonymous_callers_learn_only_whether_it_is_ok(client, live):
    beat.acquire_lease("beat-1")
    with patch("tasks_app.workers.ping", return_value=live):
        response = client.get("/health")

    ok = bool(live)
    assert response.status_code == (200 if ok else 503)
    assert response.json() == {"status": "ok" if ok else "unhealthy"}


@pytest.mark.django_db
def test_details_need_staff_or_an_api_token(client, alice, staff):
    beat.acquire_lease("beat-1")
    client.force_login(alice)  # a user's browser session: no details
    with patch("tasks_app.workers.ping", return_value=["w1@host"]):
        session = client.get("/health").json()
        token = client_for(alice).get("/health").json()
        wrong_token = client_for(None).get(
            "/health", HTTP_AUTHORIZATION="Token not-a-real-one"
        )
        client.force_login(staff)
        staff_session = client.get("/health").json()

    assert session == {"status": "ok"}
    assert token["workers"]["live"] == ["w1@host"] and token["failing"] == []
    assert wrong_token.status_code == 200
    assert wrong_token.json() == {"status": "ok"}
    assert staff_session["workers"]["live"] == ["w1@host"]


@pytest.mark.django_db
def test_a_failing_check_shows_its_exception_type_never_its_text(admin_client):
    secret = "could not connect to server db.internal:5432 as claw_owner"
    with (
        patch("tasks_app.workers.ping", return_value=["w1@host"]),
        patch.dict(
            "tasks_app.health.CHECKS",
            {"broker": Mock(side_effect=ConnectionError(secret))},
        ),
    ):
        detailed = admin_client.get("/health")

    assert detailed.status_code == 503
    assert detailed.json()["broker"] == {"ok": False, "error": "ConnectionError"}
    assert "db.internal" not in detailed.content.decode()


@pytest.mark.django_db
def test_checks_run_once_per_cache_interval_however_many_requests(client, settings):
    settings.CLAW_HEALTH_CACHE_SECONDS = 5
    cache.delete(health.CACHE_KEY)
    beat.acquire_lease("beat-1")
    try:
        with patch("tasks_app.workers.ping", return_value=["w1@host"]) as ping:
            answers = [client.get("/health").status_code for _ in range(20)]
            assert ping.call_count == 1
            cache.delete(health.CACHE_KEY)  # the interval is over
            client.get("/health")
            assert ping.call_count == 2
    finally:
        cache.delete(health.CACHE_KEY)
    assert answers == [200] * 20


def test_the_cache_interval_is_a_setting_with_a_short_default():
    from claw import settings as production

    assert 0 < production.CLAW_HEALTH_CACHE_SECONDS <= 10
