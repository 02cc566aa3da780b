"""Run web + worker + beat as one supervised process tree (what `make run` starts)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

STOP_GRACE_SECONDS = 20


class Command(BaseCommand):
    help = (
        "Start gunicorn, one Celery worker on every queue and one beat. Ctrl-C or "
        "SIGTERM stops all of them; if one dies, the others are stopped too."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))
        parser.add_argument(
            "--concurrency", type=int, default=settings.CELERY_WORKER_CONCURRENCY
        )

    def handle(self, *args, host, port, concurrency, **options):
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        for name, command in self._commands(host, port, concurrency).items():
            # Each child leads its own process group, so stopping it also stops the
            # worker's pool processes and gunicorn's workers.
            self.children[name] = subprocess.Popen(command, start_new_session=True)
        self.stdout.write(f"CLAW is up: http://{host}:{port}/admin/  (Ctrl-C stops it)")
        exit_code = self._supervise()
        self._stop_all()
        sys.exit(exit_code)

    def _commands(self, host: str, port: str, concurrency: int) -> dict[str, list[str]]:
        python = sys.executable
        bin_dir = os.path.dirname(python)
        celery = [python, "-m", "celery", "-A", "claw"]
        return {
            "web": [
                os.path.join(bin_dir, "gunicorn"),
                "claw.wsgi",
                "--bind",
                f"{host}:{port}",
                "--workers",
                os.environ.get("WEB_CONCURRENCY", "2"),
                "--access-logfile",
                "-",
            ],
            "worker": [
                *celery,
                "worker",
                "--queues",
                ",".join(settings.CLAW_QUEUES),
                "--concurrency",
                str(concurrency),
                "--hostname",
                "embedded@%h",
                "--loglevel",
                "INFO",
            ],
            "beat": [*celery, "beat", "--loglevel", "INFO", "--pidfile="],
        }

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def _supervise(self) -> int:
        while not self.stopping:
            for name, child in self.children.items():
                if child.poll() is not None:
                    self.stderr.write(
                        f"{name} exited with {child.returncode}; stopping"
                    )
                    return 1
            time.sleep(0.5)
        return 0

    def _stop_all(self) -> None:
        self.stdout.write("Stopping web, worker and beat...")
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
