"""docker-compose.yml parsed and checked against the code (no Docker engine here)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from django.conf import settings

from tests.harness import BASE_DIR, wait_for

COMPOSE = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
ALL_SERVICES = COMPOSE["services"]
# What `docker compose up` starts; the rest are opt-in profiles (monitoring).
SERVICES = {n: s for n, s in ALL_SERVICES.items() if not s.get("profiles")}


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


def redis_script() -> str:
    """The redis service's start script as its shell runs it ($$ is compose's $)."""
    entrypoint = SERVICES["redis"]["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"]
    return entrypoint[2].replace("$$", "$")


def test_redis_is_durable_and_never_evicts_queued_messages():
    script = redis_script()
    assert "--appendonly yes" in script
    assert "--maxmemory-policy noeviction" in script
    # the image's entrypoint still runs, so Redis drops root for its own user
    assert "exec docker-entrypoint.sh redis-server" in script


def test_the_redis_password_is_on_no_command_line():
    text = (BASE_DIR / "docker-compose.yml").read_text()
    assert "--requirepass" not in text and "redis-cli -a" not in text
    assert SERVICES["redis"]["environment"]["REDIS_PASSWORD"].startswith(
        "${REDIS_PASSWORD:?"
    )
    # compose expands ${...} itself: only the environment may hold the password
    for name, service in SERVICES.items():
        commands = [command(name), str(service.get("entrypoint", ""))]
        commands.append(str(service.get("healthcheck", {}).get("test", "")))
        assert not any("${REDIS_PASSWORD" in c for c in commands), name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
def test_the_redis_start_script_sets_the_password_from_the_environment(tmp_path):
    # The compose script as written, run with this machine's redis-server: only
    # the image's entrypoint, the chown to its user and the paths differ.
    password = "s3cret-" + "x" * 20
    port = free_port()
    script = (
        redis_script()
        .replace("/tmp/redis-auth.conf", str(tmp_path / "auth.conf"))
        .replace("chown redis", "true")
        .replace("exec docker-entrypoint.sh redis-server", "exec redis-server")
        .strip()
        + f" --port {port} --dir {tmp_path} --save ''"
    )
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password}
    server = subprocess.Popen(["sh", "-c", script], env=env)
    try:
        health = SERVICES["redis"]["healthcheck"]["test"]
        assert health[0] == "CMD-SHELL"
        probe = (
            health[1].replace("$$", "$").replace("redis-cli", f"redis-cli -p {port}")
        )

        def healthy():
            return subprocess.run(["sh", "-c", probe], env=env).returncode == 0

        wait_for(healthy, 10, message="the compose healthcheck to pass")
        argv = (Path("/proc") / str(server.pid) / "cmdline").read_bytes()
        assert b"redis-server" in argv and password.encode() not in argv
        anonymous = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True
        )
        assert "NOAUTH" in anonymous.stdout + anonymous.stderr
        assert oct((tmp_path / "auth.conf").stat().st_mode & 0o777) == "0o600"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_web_is_published_on_loopback_unless_told_otherwise():
    assert SERVICES["web"]["ports"] == ["${WEB_BIND_ADDRESS:-127.0.0.1}:8000:8000"]


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


def test_monitoring_is_an_optional_profile_provisioned_with_the_shipped_files():
    profiled = {n for n, s in ALL_SERVICES.items() if s.get("profiles")}
    assert profiled == {"prometheus", "grafana"}
    for name in profiled:
        assert ALL_SERVICES[name]["profiles"] == ["monitoring"]
        for volume in ALL_SERVICES[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (BASE_DIR / source).exists(), source
    prometheus = yaml.safe_load(
        (BASE_DIR / "deploy/prometheus/prometheus.yml").read_text()
    )
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["web:8000"]
    # the token is a secret from the environment, not written in a file
    assert job["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert COMPOSE["secrets"]["metrics_token"] == {"environment": "METRICS_TOKEN"}
    assert ALL_SERVICES["prometheus"]["secrets"] == ["metrics_token"]
    assert "/etc/prometheus/alerts.yml" in prometheus["rule_files"]
