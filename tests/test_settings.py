"""Settings refuse unsafe production configurations."""

from __future__ import annotations

import json
import subprocess
import sys

from django.core.management import call_command

from tests.harness import BASE_DIR
from tests.test_smoke_embedded import embedded_env


def run_check(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_refuses_to_start_without_secret_key_when_debug_is_off(tmp_path):
    env = embedded_env(tmp_path)
    del env["SECRET_KEY"]
    done = run_check(env)
    assert done.returncode != 0
    assert "SECRET_KEY must be set" in done.stderr


def test_check_deploy_is_clean_with_https_on(tmp_path):
    env = {**embedded_env(tmp_path), "HTTPS_ONLY": "true"}
    done = run_check(env, "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr


def test_short_visibility_timeout_raises_a_system_check_warning(tmp_path):
    env = {
        **embedded_env(tmp_path),
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15",
        "CELERY_VISIBILITY_TIMEOUT": "60",
    }
    done = run_check(env)
    assert "tasks_app.W001" in done.stdout + done.stderr


def test_a_rate_limit_window_past_the_visibility_timeout_is_warned_about(tmp_path):
    # 11 windows of an hour: a deferred vectorize would outlive the 2 h default
    env = {
        **embedded_env(tmp_path),
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15",
        "KNOWLEDGE_VECTORIZE_RATE_LIMIT": "5/h",
    }
    done = run_check(env)
    assert "longest rate-limit deferral (39600s)" in done.stdout + done.stderr
    fine = run_check({**env, "KNOWLEDGE_VECTORIZE_RATE_LIMIT": "5/m"})
    assert "W001" not in fine.stdout + fine.stderr


def test_a_lease_not_shorter_than_the_visibility_timeout_is_warned_about(settings):
    from tasks_app.apps import lease_check

    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 60}
    settings.CLAW_LEASE_SECONDS = 60
    assert [w.id for w in lease_check(None)] == ["tasks_app.W002"]
    settings.CLAW_LEASE_SECONDS = 20
    assert lease_check(None) == []


def test_a_started_threshold_near_the_lease_or_visibility_is_warned_about(settings):
    from tasks_app.apps import started_after_check

    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 60}
    settings.CLAW_LEASE_SECONDS = 30
    settings.CLAW_STARTED_AFTER_SECONDS = 0.5
    assert started_after_check(None) == []
    settings.CLAW_STARTED_AFTER_SECONDS = 11  # over a third of the lease
    assert [w.id for w in started_after_check(None)] == ["tasks_app.W003"]
    settings.CLAW_LEASE_SECONDS = 60
    settings.CLAW_STARTED_AFTER_SECONDS = 16  # over a quarter of the timeout
    assert [w.id for w in started_after_check(None)] == ["tasks_app.W003"]


def test_a_run_starts_late_only_well_inside_the_visibility_timeout(settings):
    from tasks_app import starts

    settings.IS_FILESYSTEM_BROKER = False
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 60}
    settings.CLAW_STARTED_AFTER_SECONDS = 0.5
    assert starts.deferrable(1000.0, now=1000.0)
    assert starts.deferrable(1000.0, now=1029.5)  # 29.5 + 0.5 = half the timeout
    assert not starts.deferrable(1000.0, now=1029.6)  # e.g. an ETA held that long
    assert not starts.deferrable(None, now=1000.0)  # no delivery time: eager
    settings.CLAW_STARTED_AFTER_SECONDS = 0
    assert not starts.deferrable(1000.0, now=1000.0)
    settings.CLAW_STARTED_AFTER_SECONDS = 0.5
    settings.IS_FILESYSTEM_BROKER = True  # no redelivery timeout to rely on
    assert not starts.deferrable(1000.0, now=1000.0)


def test_only_json_is_accepted(settings):
    assert settings.CELERY_ACCEPT_CONTENT == ["json"]
    assert settings.CELERY_TASK_SERIALIZER == "json"
    call_command("check")  # the real settings pass
    settings.CELERY_ACCEPT_CONTENT = ["json", "pickle"]
    from tasks_app.apps import json_only_check

    assert [e.id for e in json_only_check(None)] == ["tasks_app.E001"]


def test_settings_out_of_range_are_system_check_errors_with_ids(tmp_path):
    env = {
        **embedded_env(tmp_path),
        "JOBS_MAX_SECTIONS": "0",
        "AI_PASSAGES": "101",
        "CELERY_AI_POOL": "gevent",
    }
    done = run_check(env)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "writing.E102" in output and "JOBS_MAX_SECTIONS must be between" in output
    assert "claw.E102" in output and "tasks_app.E101" in output
    assert run_check(embedded_env(tmp_path)).returncode == 0


PROXY_HEADER = (
    "from django.conf import settings; print(repr(settings.SECURE_PROXY_SSL_HEADER))"
)


def test_the_proxy_ssl_header_is_trusted_only_when_a_setting_says_a_proxy_is_there(
    tmp_path,
):
    env = embedded_env(tmp_path)

    def header(**extra) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", PROXY_HEADER],
            cwd=BASE_DIR,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    assert header() == "None"
    assert header(HTTPS_ONLY="true") == "None"
    assert (
        header(TRUST_PROXY_SSL_HEADER="true") == "('HTTP_X_FORWARDED_PROTO', 'https')"
    )
    assert header(TRUST_PROXY_SSL_HEADER="false") == "None"


def test_without_a_trusted_proxy_a_forwarded_https_claim_is_not_believed(
    client, settings
):
    # what the production settings give without TRUST_PROXY_SSL_HEADER
    settings.SECURE_PROXY_SSL_HEADER = None
    settings.SECURE_SSL_REDIRECT = True
    claimed = client.get("/api/v1/tasks/", HTTP_X_FORWARDED_PROTO="https")
    assert claimed.status_code == 301 and claimed["Location"].startswith("https://")


TIME_LIMITS = {  # task: (its soft limit's setting, its hard limit's setting)
    "knowledge.vectorize_document": "KNOWLEDGE_VECTORIZE",
    "knowledge.update_knowledge_base": "KNOWLEDGE_UPDATE",
    "knowledge.generate_outline_from_query": "JOBS_OUTLINE",
    "knowledge.generate_document_from_outline": "JOBS_DOCUMENT",
    "knowledge.write_section": "JOBS_SECTION",
    "claw.generate_ai_response": "AI_REPLY",
}
PRINT_LIMITS = """
import json
from claw.celery import registered_tasks
tasks = registered_tasks()
print(json.dumps({
    name: [task.soft_time_limit, task.time_limit] for name, task in tasks.items()
}))
"""


def test_every_time_limit_comes_from_the_environment(tmp_path):
    env = embedded_env(tmp_path)
    for n, prefix in enumerate(TIME_LIMITS.values()):
        env[f"{prefix}_SOFT_TIME_LIMIT"] = str(1000 + n)
        env[f"{prefix}_TIME_LIMIT"] = str(2000 + n)
    env["CELERY_TASK_SOFT_TIME_LIMIT"], env["CELERY_TASK_TIME_LIMIT"] = "77", "88"
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", PRINT_LIMITS],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    limits = json.loads(done.stdout.splitlines()[-1])
    for n, name in enumerate(TIME_LIMITS):
        assert limits[name] == [1000 + n, 2000 + n], name
    # a task without limits of its own has the defaults
    assert limits["tasks_app.ping"] == [77, 88]


def test_w001_compares_the_visibility_timeout_with_the_longest_real_time_limit(
    tmp_path,
):
    env = {
        **embedded_env(tmp_path),
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15",
        "CELERY_VISIBILITY_TIMEOUT": "700",
    }
    fine = run_check(env)  # the longest limit is vectorize's 600 s
    assert "W001" not in fine.stdout + fine.stderr
    longer = run_check({**env, "JOBS_OUTLINE_TIME_LIMIT": "800"})
    assert "task time limit (800s)" in longer.stdout + longer.stderr
    assert "tasks_app.W001" in longer.stdout + longer.stderr
