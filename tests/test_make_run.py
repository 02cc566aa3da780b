"""`make run` itself, as a supervisor starts it: the admin account and address are
printed again below the workers' banners once the stack is healthy, and
`kill -INT` of the make process stops every process of the stack."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time

import pytest

from tests.harness import BASE_DIR, wait_for
from tests.test_runstack import admin_login, children_of, free_port, group_alive
from tests.test_smoke_embedded import embedded_env


def descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        for child in children_of(queue.pop()):
            found.append(child)
            queue.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.worker
def test_make_run_announces_the_admin_once_healthy_and_stops_on_sigint(tmp_path):
    env = embedded_env(tmp_path)
    del env["SECRET_KEY"]  # make run generates $(CLAW_VAR_DIR)/secret_key
    env["AI_RATE_LIMIT"] = ""
    port = free_port()
    log = tmp_path / "make.log"
    make = subprocess.Popen(
        ["make", "run", f"PORT={port}"],
        cwd=BASE_DIR,
        env=env,
        stdout=open(log, "wb"),  # noqa: SIM115 - lives with make
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a supervisor's child, not our process group
    )
    processes: list[int] = []
    try:

        def announced():
            assert make.poll() is None, log.read_text()[-3000:]
            return "CLAW is up: " in log.read_text()

        wait_for(announced, 180, interval=1, message="the healthy banner")
        output = log.read_text()
        banner = output[output.rindex("CLAW is up: ") :]
        assert banner.startswith(f"CLAW is up: http://127.0.0.1:{port}/admin/")
        password = re.search(r"username: admin  password: (\S+)", banner).group(1)
        # below the workers' start-up banners, where a reader looks last
        assert output.rindex("ready.") < output.rindex("CLAW is up: ")
        assert (tmp_path / "secret_key").exists()
        login = admin_login(f"http://127.0.0.1:{port}", password)
        assert login.status_code == 302 and login.headers["location"] == "/admin/"
        processes = descendants(make.pid)
        groups = {os.getpgid(pid) for pid in processes if alive(pid)}
        assert len(processes) >= 5  # runstack, web, two workers, beat (+ pools)
    finally:
        processes = processes or descendants(make.pid)  # to clean up on failure
        groups = {os.getpgid(pid) for pid in processes if alive(pid)}
        os.kill(make.pid, signal.SIGINT)  # the make process alone, as a supervisor
        try:
            make.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for group in groups | {make.pid}:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
            pytest.fail("make run did not stop on SIGINT:\n" + log.read_text()[-2000:])
    deadline = time.monotonic() + 10
    while any(group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [g for g in groups if group_alive(g)]
    assert not [pid for pid in processes if alive(pid)]
    assert make.returncode != 0  # make reports the signal, as after Ctrl-C
