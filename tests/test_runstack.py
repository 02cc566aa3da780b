"""`make run`'s process tree: health goes green, the printed password logs in, AI
replies run on the threads-pool worker over SQLite, and Ctrl-C (SIGINT) leaves no
process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.harness import BASE_DIR, wait_for
from tests.test_smoke_embedded import embedded_env, manage


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def admin_login(base: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=10) as client:
        page = client.get("/admin/login/").text
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        return client.post(
            "/admin/login/?next=/admin/",
            data={
                "csrfmiddlewaretoken": token,
                "username": "admin",
                "password": password,
            },
            headers={"Referer": f"{base}/admin/login/"},
        )


# Twenty questions at once: the threads-pool worker writes every reply through
# SQLite at the same time (WAL, busy timeout, IMMEDIATE transactions), and none
# may fail with "database is locked".
ASK_TWENTY = """
import json, time
from django.contrib.auth import get_user_model
from claw import conversations
from claw.models import Message
admin = get_user_model().objects.get(username="admin")
conversation = conversations.create_conversation(admin)
ids = [
    conversations.post_message(conversation, f"question {n}").assistant_message.pk
    for n in range(20)
]
replies = Message.objects.filter(pk__in=ids)
deadline = time.monotonic() + 60
while replies.exclude(status__in=["done", "failed"]).exists():
    assert time.monotonic() < deadline, list(replies.values_list("status", flat=True))
    time.sleep(0.2)
print(json.dumps({
    "statuses": sorted(set(replies.values_list("status", flat=True))),
    "errors": sorted(set(replies.values_list("error", flat=True))),
    "workers": sorted(set(replies.values_list("task__worker", flat=True))),
}))
"""


@pytest.mark.worker
def test_runstack_serves_a_healthy_stack_and_stops_every_child_on_ctrl_c(tmp_path):
    # no rate limit: twenty replies would otherwise wait for later windows; no
    # per-user cap on replies in flight (issue 20): the twenty are one user's
    env = {
        **embedded_env(tmp_path),
        "HTTPS_ONLY": "false",
        "AI_RATE_LIMIT": "",
        "AI_MAX_REPLIES_IN_FLIGHT": "0",
    }
    manage(env, "migrate", "--noinput")
    manage(env, "collectstatic", "--noinput", "-v", "0")
    created = manage(env, "ensure_admin")
    password = re.search(r"password: (\S+)", created).group(1)
    # A second run keeps the account and prints no password.
    assert "password:" not in manage(env, "ensure_admin")
    port = free_port()
    stack = subprocess.Popen(
        [sys.executable, "manage.py", "runstack", "--port", str(port)],
        cwd=BASE_DIR,
        env=env,
        stdout=open(tmp_path / "stack.log", "wb"),  # noqa: SIM115 - lives with stack
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy():
            assert stack.poll() is None, (tmp_path / "stack.log").read_text()[-3000:]
            try:
                return httpx.get(f"{base}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 120, interval=1, message="/health to answer 200")
        # 200 means every part is fine (workers live, beat ticking); an
        # anonymous caller is told no more than that
        assert httpx.get(f"{base}/health", timeout=5).json() == {"status": "ok"}
        login = admin_login(base, password)
        assert login.status_code == 302 and login.headers["location"] == "/admin/"
        groups = children_of(stack.pid)
        assert len(groups) == 4  # web, worker, AI worker (threads), beat
        replies = json.loads(manage(env, "shell", "-c", ASK_TWENTY).splitlines()[-1])
        assert replies["statuses"] == ["done"], replies["errors"]
        assert [w.split("@")[0] for w in replies["workers"]] == ["embedded-ai"]
    finally:
        stack.send_signal(signal.SIGINT)
        stack.wait(timeout=60)
    # Every child led its own process group; none of them may survive.
    deadline = time.monotonic() + 10
    while any(group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [g for g in groups if group_alive(g)]
    assert stack.returncode == 0
