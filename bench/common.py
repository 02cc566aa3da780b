"""Helpers shared by the scenarios: bench databases, Redis db, worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
# Appended to every claw_bench_* database name: with its own BENCH_REDIS_URL, a run
# that must not meet another one (tests/test_bench_smoke.py in someone's suite
# uses the defaults) gets databases of its own.
DB_SUFFIX = os.environ.get("BENCH_DB_SUFFIX", "")
ARTIFACTS = Path(os.environ.get("BENCH_ARTIFACTS", "/tmp/artifacts-bench"))


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies.

    Workers lead their own process group (so stop() reaches their pool children),
    which also means nothing else stops them if the runner is killed outright.
    """
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def bench_db(name: str) -> str:
    return name + DB_SUFFIX if name.startswith("claw_bench_") else name


def pg_url(db: str) -> str:
    return f"postgres://postgres@127.0.0.1:5432/{bench_db(db)}"


def psql(sql: str, db: str = "postgres") -> str:
    db = bench_db(db)
    out = subprocess.run(
        [*PG, "-At", "-d", db, "-c", sql], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"psql on {db} failed: {out.stderr.strip()[-800:]}")
    return out.stdout.strip()


def fresh_db(name: str) -> str:
    assert name.startswith("claw_bench_"), name
    psql(f"DROP DATABASE IF EXISTS {bench_db(name)} WITH (FORCE)")
    psql(f"CREATE DATABASE {bench_db(name)}")
    return pg_url(name)


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))
    }
    env.pop("DATABASE_URL", None)
    env.update({"PYTHONPATH": str(ROOT), "SECRET_KEY": "bench", "LOG_LEVEL": "WARNING"})
    env.update(extra)
    return env


def run_py(args: list[str], env: dict, timeout: float = 300) -> str:
    out = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{args[:3]} failed: {out.stderr[-800:]}")
    return out.stdout


class Worker:
    """A `celery worker` subprocess in its own process group, logged to ARTIFACTS."""

    def __init__(
        self,
        app: str,
        env: dict,
        name: str,
        concurrency: int = 2,
        extra: tuple[str, ...] = (),
    ):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / f"{name}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                app,
                "worker",
                "-c",
                str(concurrency),
                "-l",
                "INFO",
                "-n",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                *extra,
            ],  # fmt: skip
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-800:]}")
            if " ready." in self.log_path.read_text():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready, see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def row(scenario, metric, value, unit="", target="", note="") -> dict:
    return {
        "scenario": scenario,
        "metric": metric,
        "value": value,
        "unit": unit,
        "target": target,
        "note": note,
    }


# Run as a child (page_times): each page through Django's test Client as a
# logged-in superuser, or with a bearer token for /metrics when one is given;
# p50, p95 and max in ms of n requests after one warm-up, and the p50 of the
# CPU time this process spent on one (on a busy machine, the part of the wall
# time that is the page's own work rather than waiting for a core).
PAGE_TIMES = """
import json, statistics, sys, time, django
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
pages, n, token = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
User = get_user_model()
user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
    "bench", "bench@example.com", "bench-password")
staff, scraper = Client(), Client(HTTP_AUTHORIZATION="Bearer " + token)
staff.force_login(user)
out = {}
for label, url in pages.items():
    client = scraper if token and url == "/metrics" else staff
    status = client.get(url).status_code
    if status != 200:
        out[label] = {"status": status}
        continue
    times, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        client.get(url)
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    times.sort()
    out[label] = {"status": 200, "p50": statistics.median(times),
                  "p95": times[min(len(times) - 1, int(0.95 * len(times)))],
                  "max": times[-1], "cpu_p50": statistics.median(cpu)}
print(json.dumps(out))
"""


def page_times(
    env: dict, pages: dict[str, str], n: int, token: str = "", timeout: float = 600
) -> dict[str, dict]:
    """Label -> {"status", and for a 200 "p50", "p95", "max", "cpu_p50" in ms}
    (PAGE_TIMES)."""
    out = run_py(["-c", PAGE_TIMES, json.dumps(pages), str(n), token], env, timeout)
    return json.loads(out.strip().splitlines()[-1])
