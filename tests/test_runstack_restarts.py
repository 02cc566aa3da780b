"""runstack's supervision with stand-in children (real processes, no Celery): a
child that dies unexpectedly is restarted with backoff while the others keep
running, and Ctrl-C still stops everything."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tests.harness import BASE_DIR, wait_for
from tests.test_runstack import free_port, group_alive
from tests.test_smoke_embedded import embedded_env

# runstack with its children replaced: "steady" runs on; "flaky" appends a line
# to a file at each start and exits 3 on its first two starts.
STACK = """
import sys, django
django.setup()
from django.core.management import call_command
from tasks_app.management.commands import runstack

starts, steady_pid = sys.argv[1], sys.argv[2]
flaky = (
    "import sys, time\\n"
    f"with open({starts!r}, 'a') as f: f.write('start\\\\n')\\n"
    f"if len(open({starts!r}).read().split()) <= 2: sys.exit(3)\\n"
    "time.sleep(120)\\n"
)
steady = (
    "import os, time\\n"
    f"open({steady_pid!r}, 'w').write(str(os.getpid()))\\n"
    "time.sleep(120)\\n"
)
runstack.Command._commands = lambda self, *a: {
    "steady": [sys.executable, "-c", steady],
    "flaky": [sys.executable, "-c", flaky],
}
call_command("runstack", "--port", sys.argv[3])
"""


def test_a_child_that_dies_is_restarted_with_backoff_and_ctrl_c_stops_all(tmp_path):
    starts, steady_pid = tmp_path / "starts", tmp_path / "steady.pid"
    log = tmp_path / "stack.log"
    stack = subprocess.Popen(
        [sys.executable, "-c", STACK, str(starts), str(steady_pid), str(free_port())],
        cwd=BASE_DIR,
        env=embedded_env(tmp_path),
        stdout=open(log, "wb"),  # noqa: SIM115 - lives with stack
        stderr=subprocess.STDOUT,
    )
    try:

        def started_three_times():
            assert stack.poll() is None, log.read_text()[-3000:]
            return starts.exists() and len(starts.read_text().split()) >= 3

        began = time.monotonic()
        wait_for(started_three_times, 30, interval=0.2, message="two restarts")
        took = time.monotonic() - began
        wait_for(steady_pid.exists, 10, message="the steady child")
        steady = int(steady_pid.read_text())
        assert group_alive(steady)  # the first one, never restarted
        time.sleep(1.5)
        assert len(starts.read_text().split()) == 3  # running now: not restarted
    finally:
        stack.send_signal(signal.SIGINT)
        stack.wait(timeout=30)
    output = log.read_text()
    print(f"\n[runstack restarts] three starts in {took:.1f} s")
    assert "flaky exited with 3" in output
    assert "restarting it in 1 s (failure 1 in a row)" in output
    assert "restarting it in 2 s (failure 2 in a row)" in output
    assert took >= 3  # backoff 1 s then 2 s, not a busy loop
    assert stack.returncode == 0
    deadline = time.monotonic() + 10
    while group_alive(steady) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(steady)
