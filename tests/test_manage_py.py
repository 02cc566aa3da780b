"""manage.py in the checkout works without exporting anything on the embedded
stack, and commands that talk to workers print no kombu noise."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness import BASE_DIR
from tests.test_smoke_embedded import embedded_env

SHOW_KEY = "from django.conf import settings; print(settings.SECRET_KEY)"


def run(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def without_secret(tmp_path) -> dict[str, str]:
    env = embedded_env(tmp_path)
    del env["SECRET_KEY"]
    return env


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory):
    """A migrated embedded stack's var/ with the key `make run` generates."""
    path = tmp_path_factory.mktemp("var")
    (path / "secret_key").write_text("key-from-make-run-0123456789abcdefghij\n")
    migrated = run(without_secret(path), "migrate", "--noinput", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    return path


def test_manage_py_reads_the_key_make_run_generated(var_dir):
    env = without_secret(var_dir)

    shown = run(env, "shell", "-c", SHOW_KEY)
    admin = run(env, "ensure_admin")
    token = run(env, "issue_token", "admin")

    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.splitlines()[-1] == "key-from-make-run-0123456789abcdefghij"
    assert admin.returncode == 0 and "password:" in admin.stdout
    assert token.returncode == 0, token.stderr[-2000:]


def test_without_the_key_file_the_error_says_where_it_comes_from(tmp_path):
    done = run(without_secret(tmp_path), "check")
    assert done.returncode != 0
    assert "make run" in done.stderr and str(tmp_path / "secret_key") in done.stderr


def test_a_deployment_with_a_database_url_never_reads_the_file(tmp_path):
    (tmp_path / "secret_key").write_text("key-from-make-run-0123456789abcdefghij\n")
    env = without_secret(tmp_path) | {"DATABASE_URL": "postgres://x@127.0.0.1/x"}
    done = run(env, "check")
    assert done.returncode != 0 and "SECRET_KEY must be set" in done.stderr


def test_commands_that_talk_to_workers_print_no_default_hostname_noise(var_dir):
    env = embedded_env(var_dir)
    for command in (["claw_status"], ["requeue_stuck", "--dry-run"]):
        done = run(env, *command)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "No hostname was supplied" not in done.stdout + done.stderr, command
