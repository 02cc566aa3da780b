"""Fixtures shared by every suite: real worker and beat processes on the test database."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.harness import CeleryProcess

IN_CI = os.environ.get("CI", "").lower() == "true"
ARTIFACTS = Path(
    os.environ.get("TEST_ARTIFACTS", Path(__file__).parent / "test-artifacts")
)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Fail in CI, skip elsewhere, when a real service a test needs is down."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(message + " (CI=true: services must be up)")
    pytest.skip(message)


# The users of every suite: alice and bob own things, staff sees everything.
@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-pass-1")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-pass-1")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user(
        "ops", password="ops-pass-1", is_staff=True
    )


# What the admin's and the API's operations need beyond is_staff (README, Admin).
OPERATIONS_PERMISSIONS = (
    "tasks_app.retry_taskrecord",
    "tasks_app.cancel_taskrecord",
    "tasks_app.submit_taskrecord",
    "tasks_app.control_workers",
    "django_celery_beat.change_periodictask",
)


def grant(user, *perms: str):
    """user holding perms ("app_label.codename"), re-read so has_perm sees them."""
    from django.contrib.auth.models import Permission

    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return type(user).objects.get(pk=user.pk)


@pytest.fixture
def operator(django_user_model):
    """A staff user granted every operations permission (not a superuser)."""
    user = django_user_model.objects.create_user(
        "operator", password="operator-pass-1", is_staff=True
    )
    return grant(user, *OPERATIONS_PERMISSIONS)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's, then no result rows left by an earlier run. --reuse-db
    (pyproject) keeps the test database between runs, and the session worker's
    warm shutdown may store its last tasks' results after the last test's
    flush: the next run's first, non-transactional tests would count them (seen
    in a second local `make test`: 15 results where a test made 1)."""
    from django_celery_results.models import ChordCounter, GroupResult, TaskResult

    with django_db_blocker.unblock():
        for model in (TaskResult, GroupResult, ChordCounter):
            model.objects.all().delete()


@pytest.fixture(scope="session")
def redis_broker():
    """The tests' Redis database, emptied once per session."""
    from django.conf import settings

    require_service("Redis", "127.0.0.1", 6379)
    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    return client


@pytest.fixture(scope="session")
def worker_env(django_db_setup, django_db_blocker, redis_broker) -> dict[str, str]:
    """Environment for subprocesses: same settings, pointed at the test database."""
    from django.db import connection

    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "claw.test_settings",
        "DATABASE_URL": url,
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def celery_worker(worker_env, artifacts_dir):
    """One real prefork worker, shared by the whole session, on every queue but
    knowledge_remote (tests.harness.QUEUES): as in runstack and docker-compose,
    that one is the threads worker's (knowledge/tests/test_remote_worker.py)."""
    from claw.celery import app

    worker = CeleryProcess(
        "worker", worker_env, ["-c", "2"], artifacts_dir / "worker.log"
    )
    with worker.running(app):
        yield worker


@pytest.fixture
def start_worker(worker_env, artifacts_dir):
    """Factory for extra workers a test starts, kills and restarts itself."""
    started: list[CeleryProcess] = []

    def start(*extra: str, env: dict | None = None, wait: bool = True) -> CeleryProcess:
        from claw.celery import app

        name = f"worker-{len(started)}.log"
        worker = CeleryProcess(
            "worker", {**worker_env, **(env or {})}, list(extra), artifacts_dir / name
        ).start()
        started.append(worker)
        if wait:
            worker.wait_ready(app)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def start_beat(worker_env, artifacts_dir):
    started: list[CeleryProcess] = []

    def start(env: dict | None = None) -> CeleryProcess:
        beat = CeleryProcess(
            "beat",
            {**worker_env, **(env or {})},
            [],
            artifacts_dir / f"beat-{len(started)}.log",
        ).start()
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()
