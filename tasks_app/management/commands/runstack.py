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
        "Start gunicorn, a threads-pool Celery worker for AI replies and remote "
        "embeddings, a prefork "
        "worker for every other queue and one beat. Ctrl-C or SIGTERM stops all "
        "of them; if one dies, the others are stopped too."
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

    def handle(self, *args, host, port, concurrency, ai_concurrency, **options):
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        commands = self._commands(host, port, concurrency, ai_concurrency)
        for name, command in commands.items():
            # Each child leads its own process group, so stopping it also stops the
            # worker's pool processes and gunicorn's workers.
            self.children[name] = subprocess.Popen(command, start_new_session=True)
        self.stdout.write(f"CLAW is up: http://{host}:{port}/admin/  (Ctrl-C stops it)")
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
            "web": [
                os.path.join(bin_dir, "gunicorn"),
                "claw.wsgi",
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
