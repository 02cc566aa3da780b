"""What the API and AI-reply scenarios run against: a real gunicorn, the local
model server (bench/fake_llm.py), CLAW workers, and asyncio HTTP clients.

Their own Redis database (BENCH_POOL_REDIS_URL, db 8) and claw_bench_pool_*
databases keep them apart from scenario 1's (db 7, claw_bench_*).

    python -m bench.stack prepare <conversations>   # in a Django env: user, token

Clients speak HTTP/1.1 with one connection per request (gunicorn's sync workers
close each one), in one event loop: 20 or 50 of them cost the machine less
than threads would, and their timings include no waiting for a GIL.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.bench_throughput import claw_env
from bench.common import ARTIFACTS, ROOT, Worker, die_with_parent, run_py

REDIS_URL = os.environ.get("BENCH_POOL_REDIS_URL", "redis://127.0.0.1:6379/8")
USERNAME = "bench-client"
REQUEST_TIMEOUT = 30.0  # seconds; a request that takes longer counts as failed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Child(Worker):
    """A subprocess in its own process group, logged to ARTIFACTS/<name>.log;
    stopped as common.Worker stops a worker (SIGTERM to the group, then KILL)."""

    def __init__(self, args: list[str], env: dict, name: str, pipe: bool = False):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / f"{name}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE if pipe else self.log,  # pipe: read its port
            stderr=self.log,
            start_new_session=True,
            preexec_fn=die_with_parent,
            text=True,
        )


def fake_model(
    delay: float = 0.5, pieces: int = 10, stamp: bool = False
) -> tuple[Child, str]:
    """The local chat-completions server and its base URL."""
    child = Child(
        [sys.executable, "-m", "bench.fake_llm", "--delay", str(delay)]
        + ["--pieces", str(pieces)]
        + (["--stamp"] if stamp else []),
        {**os.environ, "PYTHONPATH": str(ROOT)},
        "pool-fake-llm",
        pipe=True,
    )
    port = int(child.proc.stdout.readline())
    return child, f"http://127.0.0.1:{port}/v1"


def gunicorn(env: dict, workers: int = 4) -> tuple[Child, str]:
    port = free_port()
    child = Child(
        [
            os.path.join(os.path.dirname(sys.executable), "gunicorn"),
            "claw.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            # its default path is per user: another gunicorn would take it over
            "--no-control-socket",
        ],
        env,
        "pool-gunicorn",
    )
    base = f"http://127.0.0.1:{port}"
    wait_healthy(child, base, "gunicorn")
    return child, base


def wait_healthy(child, base: str, name: str, timeout: float = 60) -> None:
    """Wait until the server child answers /health; raise if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {child.log_path.read_text()[-800:]}")
        status, _ = asyncio.run(request(base, "GET", "/health"))
        if status:
            return
        time.sleep(0.3)
    raise TimeoutError(f"{name} did not answer")


def stack_env(db: str, model_url: str, **extra: str) -> dict:
    """A fresh, migrated claw_bench_pool_* database; every limit that would
    throttle a benchmark raised."""
    assert db.startswith("claw_bench_pool_"), db
    env = claw_env(db)
    env.update(
        CELERY_BROKER_URL=REDIS_URL,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        LLM_PROVIDER="openai",
        LLM_BASE_URL=model_url,
        LLM_MODEL="bench-model",
        AI_RATE_LIMIT="1000000/60",
        # no per-user cap on replies in flight (issue 20): the API and replies
        # scenarios send one user's replies by the hundred, and got 429s
        AI_MAX_REPLIES_IN_FLIGHT="0",
        # Per second, not per minute: DRF's throttle keeps one timestamp per
        # request of its window in the cache and copies the list on every
        # request, so a raised per-minute rate would make each request slower
        # than production's 600/min does (4.1 against 2.9 ms of CPU a poll).
        API_THROTTLE_USER="100000/s",
        API_THROTTLE_SUBMIT="100000/s",
    )
    env.update(extra)
    return env


def prepare(env: dict, conversations: int) -> dict:
    """A user with an API token and that many conversations of their own."""
    out = run_py(["-m", "bench.stack", "prepare", str(conversations)], env)
    return json.loads(out.strip().splitlines()[-1])


def _prepare_child(count: int) -> dict:
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from claw import conversations
    from tasks_app import tokens

    user, _ = get_user_model().objects.get_or_create(username=USERNAME)
    _, key = tokens.issue(user, name="bench")
    ids = [
        conversations.create_conversation(user, title=f"bench {n}").pk
        for n in range(count)
    ]
    return {"token": key, "conversations": ids}


# --- HTTP clients ------------------------------------------------------------


async def request(
    base: str,
    method: str,
    path: str,
    token: str = "",
    body: dict | None = None,
    headers: dict | None = None,
) -> tuple[int, dict | None]:
    """One request on its own connection; (0, None) when it could not be made."""
    host, port = base.removeprefix("http://").split(":")
    data = json.dumps(body).encode() if body is not None else b""
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        "Connection: close",
        "Accept: application/json",
        f"Content-Length: {len(data)}",
    ]
    if token:
        head.append(f"Authorization: Token {token}")
    if body is not None:
        head.append("Content-Type: application/json")
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
            raw = await reader.read(-1)  # gunicorn closes after the response
            writer.close()
    except (OSError, TimeoutError):
        return 0, None
    return _parse(raw)


def _parse(raw: bytes) -> tuple[int, dict | None]:
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        return 0, None
    if any(line.lower() == "transfer-encoding: chunked" for line in lines):
        payload = _dechunk(payload)
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, None


def _dechunk(payload: bytes) -> bytes:
    out, rest = [], payload
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        length = int(size.split(b";")[0], 16)
        if not length:
            break
        out.append(rest[:length])
        rest = rest[length + 2 :]
    return b"".join(out)


# --- where the CPU went ---------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU of a process and (tree) its live descendants."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            for task in os.listdir(f"/proc/{current}/task") if tree else ():
                with open(f"/proc/{current}/task/{task}/children") as kids:
                    todo += [int(k) for k in kids.read().split()]
        except (OSError, ValueError):
            continue  # exited meanwhile
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, every core."""
    first = Path("/proc/stat").read_text().splitlines()[0]
    fields = [int(x) for x in first.split()[1:8]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / TICKS, sum(fields) / TICKS


def background_load(seconds: float = 3.0) -> float:
    """How busy the machine is without us (other work on it): 0 to 1."""
    before = machine_busy()
    time.sleep(seconds)
    after = machine_busy()
    return (after[0] - before[0]) / max(after[1] - before[1], 1e-9)


class CpuMeter:
    """CPU seconds each named process tree used between start() and stop()."""

    def __init__(self, **pids: int):
        self.pids = {"bench client": os.getpid(), **pids}

    def used(self, name: str) -> float:
        # the client's children are the servers measured on their own
        return cpu_seconds(self.pids[name], tree=name != "bench client")

    def start(self) -> CpuMeter:
        self.before = {name: self.used(name) for name in self.pids}
        self.machine_before = machine_busy()
        return self

    def stop(self) -> dict[str, float]:
        used = {name: self.used(name) - self.before[name] for name in self.pids}
        now = machine_busy()
        busy, total = now[0] - self.machine_before[0], now[1] - self.machine_before[1]
        used["machine (all processes, all cores)"] = busy
        used["machine capacity"] = total
        return used


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        print(json.dumps(_prepare_child(int(sys.argv[2]))))
