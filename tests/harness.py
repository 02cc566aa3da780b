"""Real Celery worker and beat processes for tests, stopped by their own pids."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
# Every queue but knowledge_remote, which only a threads worker serves (the tests
# that need it start one).
QUEUES = "ai_high_priority,knowledge_default,notification_default,default"


def wait_for(predicate, timeout: float, interval: float = 0.1, message: str = ""):
    """Poll predicate until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def wait_final(record, timeout: float = 30, interval: float = 0.1):
    """Wait until a TaskRecord reaches a final state (read again from the
    database); the record, refreshed."""

    def final():
        record.refresh_from_db()
        return record.is_final

    wait_for(final, timeout, interval, message=f"{record} to finish")
    return record


class CeleryProcess:
    """A `celery worker` or `celery beat` subprocess in its own process group."""

    def __init__(self, kind: str, env: dict[str, str], extra: list[str], log: Path):
        self.kind = kind
        self.env = env
        self.extra = extra
        self.log_path = log
        self.proc: subprocess.Popen | None = None
        self.hostname = f"test-{uuid.uuid4().hex[:8]}@localhost"

    def start(self) -> CeleryProcess:
        args = [sys.executable, "-m", "celery", "-A", "claw", self.kind, "-l", "INFO"]
        if self.kind == "worker":
            args += ["-n", self.hostname, "-Q", QUEUES, "--without-gossip"]
            args += ["--without-mingle"]
        else:
            args += ["--pidfile="]
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args + self.extra,
            cwd=BASE_DIR,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def child_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.pid)], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def wait_ready(self, app, timeout: float = 60) -> None:
        def answered():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} exited: {self.tail()}")
            return app.control.ping(destination=[self.hostname], timeout=0.5)

        wait_for(answered, timeout, interval=0.2, message=f"{self.hostname} to answer")

    @contextlib.contextmanager
    def running(self, app):
        """Started and answering for the with-block, stopped after it."""
        self.start()
        try:
            self.wait_ready(app)
            yield self
        finally:
            self.stop()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(
                self.log_path.read_text(errors="replace").splitlines()[-lines:]
            )
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (main process and pool children)."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 15) -> None:
        if not self.proc:
            return
        self.kill(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        self.kill(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # orphaned pool children
        self.proc.wait(timeout=10)
        self.log.close()


def least_deferrals(records, *, limit: int, period: float) -> int:
    """The fewest rate-limit deferrals the records' tasks can have had.

    A task that started on its first delivery took one of the limit's slots in
    the window of that delivery, so at most limit x (windows in which first
    deliveries happened) tasks were never deferred. A first delivery near a
    window's end may have taken its slot in the next one: both windows count.
    """
    from tasks_app.models import TaskEvent

    windows = set()
    for record in records:
        first = record.events.filter(kind=TaskEvent.Kind.STARTED).order_by("id")[0]
        at = first.at.timestamp()
        windows |= {int(at // period), int((at + 0.1) // period)}
    return len(records) - limit * len(windows)


# Run in a child process: the fold of one watermark kills its own process with
# SIGKILL once it has written its rollups, before it commits.
_FOLD_KILLED_MIDWAY = """
import os, signal, sys
import django
django.setup()
from unittest import mock
from django.apps import apps
from tasks_app import rollups
rollup, watermark = apps.get_model(sys.argv[1]), int(sys.argv[2])
move = rollups._move
def die(mark, *args, **kwargs):
    if mark.pk != watermark:  # the other folds go on as usual
        return move(mark, *args, **kwargs)
    assert rollup.objects.exists()  # written, not yet committed
    os.kill(os.getpid(), signal.SIGKILL)
with mock.patch("tasks_app.rollups._move", die):
    rollups.fold()
"""


def kill_fold_midway(env: dict, rollup: str, watermark: int) -> None:
    """Run rollups.fold() in a process killed -9 in the middle of the fold of
    watermark (after writing its rollup model, e.g. "claw.LlmRollup", before
    committing)."""
    died = subprocess.run(
        [sys.executable, "-c", _FOLD_KILLED_MIDWAY, rollup, str(watermark)],
        env=env,
        timeout=60,
        capture_output=True,
        cwd=BASE_DIR,
    )
    assert died.returncode == -9, died.stderr.decode()[-2000:]
