from __future__ import annotations

from datetime import timedelta
from unittest.mock import patch

import pytest
from django.utils import timezone

from tasks_app import beat
from tasks_app.models import BeatLease


@pytest.mark.django_db
def test_health_names_every_failing_part(client):
    # given no beat has ever ticked and no worker answers
    with patch("tasks_app.workers.ping", return_value=[]):
        response = client.get("/health")

    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["beat", "workers"]
    assert body["database"]["ok"] and body["broker"]["ok"]


@pytest.mark.django_db
def test_health_is_ok_with_a_live_worker_and_a_recent_beat_tick(client):
    assert beat.acquire_lease("beat-1")
    with patch("tasks_app.workers.ping", return_value=["w1@host"]):
        response = client.get("/health")

    assert response.status_code == 200
    assert response.json()["workers"]["live"] == ["w1@host"]


@pytest.mark.django_db
def test_health_reports_a_stale_beat(client, settings):
    BeatLease.objects.create(
        pk=1, holder="old", last_tick_at=timezone.now() - timedelta(seconds=600)
    )
    with patch("tasks_app.workers.ping", return_value=["w1@host"]):
        response = client.get("/health")

    assert response.status_code == 503
    assert response.json()["failing"] == ["beat"]


@pytest.mark.django_db
def test_health_reports_a_broker_that_is_down(client, settings):
    from claw.celery import app

    real = app.connection_for_write

    def closed_port_connection():
        return real("redis://127.0.0.1:1/0")  # nothing listens on port 1

    with (
        patch("tasks_app.workers.ping", return_value=["w1@host"]),
        patch.object(app, "connection_for_write", closed_port_connection),
    ):
        beat.acquire_lease("beat-1")
        response = client.get("/health")

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
