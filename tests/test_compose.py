"""docker-compose.yml parsed and checked against the code (no Docker engine here)."""

from __future__ import annotations

import re

import yaml
from django.conf import settings

from tests.harness import BASE_DIR

COMPOSE = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def command(name: str) -> str:
    cmd = SERVICES[name].get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def queues_of(name: str) -> set[str]:
    return set(re.search(r"--queues (\S+)", command(name)).group(1).split(","))


def test_compose_has_the_documented_services():
    assert set(SERVICES) == {
        "postgres",
        "redis",
        "web",
        "streams",
        "worker-ai",
        "worker-knowledge",
        "worker-default",
        "beat",
    }


def test_worker_queues_cover_every_queue_exactly_once():
    groups = [queues_of(n) for n in ("worker-ai", "worker-knowledge", "worker-default")]
    assert groups[0] == set(settings.CLAW_THREADS_QUEUES)
    assert "--pool threads" in command("worker-ai")
    assert groups[1] == {"knowledge_default"}
    assert groups[2] == {"default", "notification_default"}
    assert set().union(*groups) == set(settings.CLAW_QUEUES)


def test_every_routed_queue_is_served_by_a_worker():
    served = set().union(
        *(queues_of(n) for n in ("worker-ai", "worker-knowledge", "worker-default"))
    )
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    assert routed <= served


def test_exactly_one_beat_and_web_runs_gunicorn():
    beats = [n for n in SERVICES if "celery -A claw beat" in command(n)]
    assert beats == ["beat"]
    assert "gunicorn claw.wsgi" in command("web")


def test_streams_run_the_asgi_app_on_uvicorn_workers():
    # WSGI would buffer the streams and gunicorn's sync workers kill long requests
    assert "gunicorn claw.asgi:application" in command("streams")
    assert "--worker-class tasks_app.asgi_worker.StreamsWorker" in command("streams")


def test_secrets_come_from_the_environment_without_defaults():
    text = (BASE_DIR / "docker-compose.yml").read_text()
    for secret in ("SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        # ${NAME:?message} fails when unset; ${NAME:-default} would be a default.
        assert f"${{{secret}:?" in text
        assert f"${{{secret}:-" not in text
    example = (BASE_DIR / ".env.example").read_text()
    for secret in ("SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        assert re.search(rf"^{secret}=$", example, re.M)


def test_redis_is_durable_and_never_evicts_queued_messages():
    redis_cmd = command("redis")
    assert "--appendonly yes" in redis_cmd
    assert "--maxmemory-policy noeviction" in redis_cmd
    assert "--requirepass" in redis_cmd


def test_app_services_point_at_the_compose_database_and_broker():
    for name in (
        "web",
        "streams",
        "worker-ai",
        "worker-knowledge",
        "worker-default",
        "beat",
    ):
        env = SERVICES[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["CELERY_BROKER_URL"].startswith("redis://")


def test_ai_replies_run_on_the_threads_pool_and_knowledge_on_prefork():
    ai = command("worker-ai")
    assert "--pool threads" in ai
    # the default of the compose variable is the settings' default
    default = re.search(r"--concurrency \$\{CELERY_AI_CONCURRENCY:-(\d+)\}", ai)
    assert int(default.group(1)) == settings.CELERY_AI_CONCURRENCY
    assert "--prefetch-multiplier 1" in ai
    assert "--pool prefork" in command("worker-knowledge")
    # threads cannot be killed at a hard time limit; statements cannot hang
    assert int(SERVICES["worker-ai"]["environment"]["DB_STATEMENT_TIMEOUT"]) > 0
    assert "DB_STATEMENT_TIMEOUT" not in SERVICES["web"]["environment"]
