"""A private PostgreSQL cluster and a private redis-server for fault runs.

The machine's PostgreSQL (5432) and Redis (6379) serve other people's tests, so a
run that restarts its services starts its own: initdb + pg_ctl in a temp folder
on a loopback port (run as the postgres user when we are root), and a
redis-server with AOF on (``--appendonly yes``, as docker-compose's) in the same
folder. No Django here: bench/chaos.py imports it before Django is set up.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(
            f"PostgreSQL binary {name} not under /usr/lib/postgresql"
        )
    return found[-1]


def as_postgres(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = " ".join(f"'{a}'" for a in args)
    if os.geteuid() == 0:
        args = ("su", "postgres", "-c", command)
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=90)


class Postgres:
    def __init__(self, port: int):
        self.port = port
        self.folder = tempfile.mkdtemp(prefix="claw-pg-")
        self.data = os.path.join(self.folder, "data")
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def init(self, db: str) -> Postgres:
        as_postgres(pg_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres")
        self.start()
        subprocess.run(
            [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
            + ["-q", "-c", f"CREATE DATABASE {db}"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c max_connections=300"
        )
        log = os.path.join(self.folder, "log")
        as_postgres(
            pg_bin("pg_ctl"), "-D", self.data, "-o", options, "-w", "start", "-l", log
        )

    def stop(self) -> None:
        as_postgres(
            pg_bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop", check=False
        )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class Redis:
    """redis-server with AOF (fsync every second), restarted over the same files.

    ``appendonly=False`` keeps nothing: a restart then loses every message, as a
    crash of an unpersisted Redis would (tests/reliability/test_redis_faults.py).
    """

    def __init__(self, port: int, folder: str, appendonly: bool = True):
        self.port = port
        self.folder = folder
        self.appendonly = "yes" if appendonly else "no"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port)]
            + ["--bind", "127.0.0.1", "--save", "", "--appendonly", self.appendonly]
            + ["--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not self.answers():
            if time.monotonic() > deadline:
                raise TimeoutError("private redis-server did not answer")
            time.sleep(0.1)
        return self

    def answers(self) -> bool:
        import redis

        try:
            return redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
        except redis.RedisError:
            return False

    def restart(self) -> None:
        """What `docker restart` does: SIGTERM (Redis flushes its AOF), then start."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # our own pid only
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        """A crash: SIGKILL, nothing flushed."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # our own pid only
            self.proc.wait(10)
