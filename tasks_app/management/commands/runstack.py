"""Run web + workers + beat as one supervised process tree (what `make run` starts).

Two workers: AI replies (ai_high_priority) wait on the model server nearly all
of their time, and vectorizing for a remote embedding endpoint (knowledge_remote)
waits on that endpoint, so both queues get a worker on Celery's threads pool with
CELERY_AI_CONCURRENCY threads (CLAW_THREADS_QUEUES); every other queue keeps a
prefork worker, whose processes suit CPU-bound knowledge work. SQLite takes the threads' writes one at
a time (WAL, busy timeout and IMMEDIATE transactions, claw.settings).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.request

from django.conf import settings
from django.core.management.base import BaseCommand

from tasks_app.management.commands.ensure_admin import (
    create_admin_if_missing,
    existing_admin_note,
)

STOP_GRACE_SECONDS = 20
# A child that dies unexpectedly is started again after 1, 2, 4 ... seconds (at
# most RESTART_BACKOFF_MAX); one that ran STABLE_AFTER_SECONDS starts the count over.
RESTART_BACKOFF_MAX = 60
STABLE_AFTER_SECONDS = 60
HEALTHY_WITHIN_SECONDS = 180  # after this, the banner says the stack is not healthy
# Signals a supervisor sends `make run` to stop it. GNU make forwards SIGTERM to
# its children but not SIGINT, SIGHUP or SIGQUIT (it assumes the terminal sent
# those to the whole process group), and then waits for its children forever.
PARENT_STOP_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM)


def caught_signals(pid: int) -> set[int] | None:
    """Signals a process has a handler for (Linux /proc), or None if unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    mask = int(line.split()[1], 16)
                    return {n for n in range(1, 65) if mask & (1 << (n - 1))}
    except (OSError, ValueError):
        return None
    return None


class ParentWatch:
    """Notices that `make` (our parent) received a stop signal it does not pass on.

    GNU make handles a fatal signal by first resetting that signal to its default
    action, then waiting for its children: its handler for the signal is gone,
    which /proc shows. Seeing that, runstack stops the stack as if it had been
    signalled itself; make then exits with the signal.
    """

    def __init__(self):
        self.pid = os.getppid()
        self.watched = (caught_signals(self.pid) or set()) & set(PARENT_STOP_SIGNALS)

    def signalled(self) -> bool:
        if not self.watched or os.getppid() != self.pid:
            return False
        caught = caught_signals(self.pid)
        return caught is not None and not self.watched <= caught


@dataclasses.dataclass
class Restart:
    at: float  # time.monotonic() when the dead child starts again


class Command(BaseCommand):
    help = (
        "Start gunicorn (uvicorn workers: the API, the admin and the live "
        "event streams), a threads-pool Celery worker for AI replies and remote "
        "embeddings, a prefork "
        "worker for every other queue and one beat. Ctrl-C or SIGTERM stops all "
        "of them; one that dies unexpectedly is restarted with backoff."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))
        parser.add_argument(
            "--concurrency", type=int, default=settings.CELERY_WORKER_CONCURRENCY
        )
        parser.add_argument(
            "--ai-concurrency", type=int, default=settings.CELERY_AI_CONCURRENCY
        )
        parser.add_argument(
            "--ensure-admin",
            action="store_true",
            help="Create the superuser 'admin' if missing; its password is printed "
            "again once the stack is healthy.",
        )
        parser.add_argument(
            "--stop-with-make",
            action="store_true",
            help="Also stop when the parent `make` is sent SIGINT, SIGHUP or "
            "SIGQUIT (make does not pass them on); `make run` sets it.",
        )

    def handle(
        self,
        *args,
        host,
        port,
        concurrency,
        ai_concurrency,
        ensure_admin=False,
        stop_with_make=False,
        **options,
    ):
        self.children: dict[str, subprocess.Popen] = {}
        self.started: dict[str, float] = {}
        self.failures: dict[str, int] = {}  # in a row, for the restart backoff
        self.stopping = False
        self.parent = ParentWatch() if stop_with_make else None
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.admin_password = create_admin_if_missing() if ensure_admin else None
        if self.admin_password:
            self.stdout.write(
                f"Created admin account  username: admin  password: "
                f"{self.admin_password}"
            )
        self.admin_url = f"http://{host}:{port}/admin/"
        probe_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.health_url = f"http://{probe_host}:{port}/health"
        self.announced = False
        self.started_at = time.monotonic()
        self.commands = self._commands(host, port, concurrency, ai_concurrency)
        self.restarts: dict[str, Restart] = {}
        for name in self.commands:
            self._start(name)
        self.stdout.write(
            f"Starting CLAW at {self.admin_url} (Ctrl-C stops it); the address and "
            "the admin account are printed again once /health answers 200."
        )
        self.stdout.flush()
        exit_code = self._supervise()
        self._stop_all()
        sys.exit(exit_code)

    def _commands(
        self, host: str, port: str, concurrency: int, ai_concurrency: int
    ) -> dict[str, list[str]]:
        python = sys.executable
        bin_dir = os.path.dirname(python)
        celery = [python, "-m", "celery", "-A", "claw"]
        return {
            # The ASGI app (claw.asgi): the REST API and admin on a thread pool,
            # the Server-Sent Events streams as coroutines, on one port.
            "web": [
                os.path.join(bin_dir, "gunicorn"),
                "claw.asgi:application",
                "--worker-class",
                "tasks_app.asgi_worker.StreamsWorker",
                "--bind",
                f"{host}:{port}",
                "--workers",
                os.environ.get("WEB_CONCURRENCY", "2"),
                "--access-logfile",
                "-",
                # nothing uses gunicorn's control interface, and its default
                # socket path is per user: a second stack would take it over
                "--no-control-socket",
            ],
            "worker": [
                *celery,
                "worker",
                "--queues",
                ",".join(
                    q
                    for q in settings.CLAW_QUEUES
                    if q not in settings.CLAW_THREADS_QUEUES
                ),
                "--concurrency",
                str(concurrency),
                "--hostname",
                "embedded@%h",
                "--loglevel",
                "INFO",
            ],
            "worker-ai": [
                *celery,
                "worker",
                "--queues",
                ",".join(settings.CLAW_THREADS_QUEUES),
                "--pool",
                settings.CELERY_AI_POOL,
                "--concurrency",
                str(ai_concurrency),
                # One reserved message per thread: a busy worker does not hoard
                # replies that another worker could start.
                "--prefetch-multiplier",
                "1",
                "--hostname",
                "embedded-ai@%h",
                "--loglevel",
                "INFO",
            ],
            "beat": [*celery, "beat", "--loglevel", "INFO", "--pidfile="],
        }

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def _start(self, name: str) -> None:
        # Each child leads its own process group, so stopping it also stops the
        # worker's pool processes and gunicorn's workers.
        self.children[name] = subprocess.Popen(
            self.commands[name], start_new_session=True
        )
        self.started[name] = time.monotonic()

    def _supervise(self) -> int:
        while not self.stopping:
            for name, child in self.children.items():
                if child.poll() is not None and name not in self.restarts:
                    self._schedule_restart(name, child)
            for name, restart in list(self.restarts.items()):
                if time.monotonic() >= restart.at:
                    del self.restarts[name]
                    self.stderr.write(f"restarting {name}")
                    self._start(name)
            if self.parent is not None and self.parent.signalled():
                self.stdout.write("make was signalled; stopping")
                break
            if not self.announced:
                self._announce_when_healthy()
            time.sleep(0.5)
        return 0

    def _schedule_restart(self, name: str, child: subprocess.Popen) -> None:
        """A child died unexpectedly (a crash, an unrecoverable broker error, the
        OOM killer): the rest of the stack keeps running and this one starts
        again after a backoff, so a child that keeps crashing is not a busy loop."""
        ran = time.monotonic() - self.started.get(name, 0.0)
        failures = 0 if ran >= STABLE_AFTER_SECONDS else self.failures.get(name, 0)
        self.failures[name] = failures + 1
        delay = min(RESTART_BACKOFF_MAX, 2**failures)
        # What it leaves behind (a worker's orphaned pool processes) goes first.
        self._signal_group(child, signal.SIGKILL)
        self.stderr.write(
            f"{name} exited with {child.returncode} after {ran:.0f} s; "
            f"restarting it in {delay} s (failure {failures + 1} in a row)"
        )
        self.restarts[name] = Restart(at=time.monotonic() + delay)

    def _announce_when_healthy(self) -> None:
        """Print the address and the admin account below the workers' start-up
        banners, once the whole stack answers /health with 200."""
        waited = time.monotonic() - self.started_at
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as response:
                healthy = response.status == 200
        except OSError:  # not listening yet, or 503 while workers start
            healthy = False
        if not healthy and waited < HEALTHY_WITHIN_SECONDS:
            return
        self.announced = True
        account = (
            f"username: admin  password: {self.admin_password}  (shown only at "
            "this first start; change it with: manage.py changepassword admin)"
            if self.admin_password
            else existing_admin_note("admin")
        )
        state = "CLAW is up" if healthy else f"CLAW is not healthy after {waited:.0f} s"
        rule = "=" * 72
        self.stdout.write(
            f"\n{rule}\n{state}: {self.admin_url}  (Ctrl-C stops it)\n"
            f"Admin {account}\n{rule}\n"
        )
        self.stdout.flush()

    def _stop_all(self) -> None:
        self.stdout.write("Stopping web, workers and beat...")
        # SIGTERM to each main process only: the worker finishes its running tasks
        # (warm shutdown) and gunicorn stops its own workers.
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self.children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
        # Whatever is left in any group (including orphaned pool processes) goes.
        for child in self.children.values():
            self._signal_group(child, signal.SIGKILL)
            if child.poll() is None:
                child.wait()

    @staticmethod
    def _signal_group(child: subprocess.Popen, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)
