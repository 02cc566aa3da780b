"""Worker controls against real workers: each worker's own answer is reported, an
unknown worker is a 404, only the controls a pool supports are offered, and the
Workers page asks every worker once."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from claw.celery import app
from tasks_app import workers
from tasks_app.tests.test_api import client_for
from tests.harness import CeleryProcess

pytestmark = [pytest.mark.django_db, pytest.mark.worker]


@pytest.fixture(autouse=True)
def patient_pages(monkeypatch):
    # What the pages show is under test, not how fast a worker answers on a
    # busy machine (bench/ measures that): wait longer than the pages do.
    monkeypatch.setattr(workers, "QUICK_TIMEOUT", 2.0)


@pytest.fixture(scope="module")
def threads_worker(celery_worker, worker_env, artifacts_dir):
    """One threads-pool worker for the module (started once: about 5 s each)."""
    worker = CeleryProcess(
        "worker", worker_env, ["-P", "threads", "-c", "2"], artifacts_dir / "thr.log"
    )
    with worker.running(app):
        yield worker


def test_the_cluster_is_asked_once_and_shows_each_pools_controls(
    celery_worker, threads_worker
):
    real_broadcast = app.control.broadcast
    with patch.object(app.control, "broadcast", wraps=real_broadcast) as broadcast:
        cluster = {w.name: w for w in workers.cluster(timeout=workers.QUICK_TIMEOUT)}
    assert broadcast.call_count == 1
    prefork, threads = cluster[celery_worker.hostname], cluster[threads_worker.hostname]
    assert prefork.pool == "prefork" and prefork.queues
    assert prefork.controls == ["restart", "grow", "shrink", "shutdown"]
    assert threads.pool == "threads" and threads.concurrency == 2
    assert threads.controls == ["shutdown"]


def test_the_workers_api_lists_controls(staff, celery_worker, threads_worker):
    body = client_for(staff).get("/api/v1/workers/").json()
    controls = {w["name"]: w["controls"] for w in body}
    assert controls[threads_worker.hostname] == ["shutdown"]
    assert "grow" in controls[celery_worker.hostname]


def test_grow_on_a_threads_worker_reports_the_workers_own_error(
    admin_client, threads_worker
):
    url = reverse("admin:tasks_app_workers_control")
    response = admin_client.post(
        url, {"operation": "grow", "worker": threads_worker.hostname}
    )
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert len(shown) == 1
    assert shown[0].startswith(f"{threads_worker.hostname}: grow failed: ")
    assert "A threads pool cannot grow" in shown[0]
    assert not any(m.startswith("Sent") for m in shown)


def test_grow_and_shrink_on_a_prefork_worker_report_its_answers(celery_worker):
    name = celery_worker.hostname
    grown = workers.pool_grow([name])
    shrunk = workers.pool_shrink([name])
    assert list(grown) == [name] and "ok" in grown[name], grown
    assert "ok" in shrunk[name], shrunk


def test_the_workers_page_offers_only_what_each_pool_supports(
    admin_client, celery_worker, threads_worker
):
    html = admin_client.get(reverse("admin:tasks_app_workers")).content.decode()
    rows = {
        name: html.split(name, 1)[1].split("</tr>", 1)[0]
        for name in (celery_worker.hostname, threads_worker.hostname)
    }
    assert 'value="grow"' in rows[celery_worker.hostname]
    assert 'value="grow"' not in rows[threads_worker.hostname]
    assert 'value="restart"' not in rows[threads_worker.hostname]
    assert "Shut down" in rows[threads_worker.hostname]


def test_controls_for_unknown_workers_are_404_naming_the_field(operator, celery_worker):
    api = client_for(operator)
    shutdown = api.post(
        "/api/v1/workers/shutdown/",
        {"worker": "nobody@nowhere", "confirm": True},
        format="json",
    )
    restart = api.post(
        "/api/v1/workers/pool/restart/",
        {"destination": ["nobody@nowhere"]},
        format="json",
    )
    assert shutdown.status_code == 404
    assert shutdown.json() == {"worker": ["No worker named nobody@nowhere answered."]}
    assert restart.status_code == 404 and "destination" in restart.json()


def test_a_pool_restart_every_worker_refuses_is_a_409_with_their_answers(
    operator, threads_worker
):
    response = client_for(operator).post(
        "/api/v1/workers/pool/restart/",
        {"destination": [threads_worker.hostname]},
        format="json",
    )
    assert response.status_code == 409
    answer = response.json()["replies"][threads_worker.hostname]
    assert "error" in answer and "restart" in answer["error"]
