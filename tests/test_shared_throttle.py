"""API throttles hold across web processes: the default cache is shared (a table)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tasks_app import tokens

# One "web process": two authenticated requests, printing their status codes.
REQUESTS = """
import django, json, sys
django.setup()
from django.test.utils import setup_test_environment
setup_test_environment()
from rest_framework.test import APIClient
client = APIClient()
client.credentials(HTTP_AUTHORIZATION="Token " + sys.argv[1])
print(json.dumps([client.get("/api/v1/conversations/").status_code for _ in range(2)]))
"""


def web_process(worker_env, token: str) -> list[int]:
    env = {**worker_env, "API_THROTTLE_USER": "3/min"}
    env.pop("CACHE_URL", None)  # the default, as `make run` and a bare deployment
    done = subprocess.run(
        [sys.executable, "-c", REQUESTS, token],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.django_db(transaction=True)
def test_a_user_throttled_in_one_process_is_throttled_in_the_next(worker_env, alice):
    _, token = tokens.issue(alice)

    first = web_process(worker_env, token)
    second = web_process(worker_env, token)

    # 3 per minute in total, not 3 per process
    assert first == [200, 200] and second == [200, 429]
