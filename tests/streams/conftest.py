"""A real ASGI server process (uvicorn serving claw.asgi) and an SSE client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from claw.tests.conftest import ScriptedServer
from tests.browser.test_admin_browser import browser_page  # noqa: F401 - a fixture
from tests.harness import BASE_DIR, CeleryProcess, wait_for

QUEUE = "live_llm"  # the streams suite's own worker's queue


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AsgiServer:
    """uvicorn serving claw.asgi:application in its own process."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "claw.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
            ],
            cwd=BASE_DIR,
            env=env,
            stdout=open(log, "wb"),  # noqa: SIM115 - lives with the process
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> AsgiServer:
        def up():
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                return httpx.get(f"{self.url}/api/v1/", timeout=2).status_code < 500
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, interval=0.2, message="uvicorn to answer")
        return self

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Event:
    event: str
    data: dict
    id: str | None
    at: float = field(default_factory=time.monotonic)


class SSEClient:
    """Reads a text/event-stream response event by event (comments skipped)."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self.lines = response.iter_lines()
        self.comments = 0

    def next(self) -> Event | None:
        event, data, event_id = "message", [], None
        for line in self.lines:
            if line == "":
                if data:
                    return Event(event, json.loads("\n".join(data)), event_id)
                continue
            if line.startswith(":"):
                self.comments += 1
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line.startswith("id: "):
                event_id = line[4:]
        return None  # the server ended the stream

    def __iter__(self):
        while (event := self.next()) is not None:
            yield event


def open_stream(base: str, path: str, token: str | None, **headers) -> httpx.Response:
    """GET a stream; the caller reads it with SSEClient and closes it."""
    headers.setdefault("Accept", "text/event-stream")  # as EventSource sends
    if token:
        headers["Authorization"] = f"Token {token}"
    client = httpx.Client(base_url=base, timeout=httpx.Timeout(30, connect=5))
    request = client.build_request("GET", path, headers=headers)
    response = client.send(request, stream=True)
    response.extensions["claw_client"] = client
    return response


def close_stream(response: httpx.Response) -> None:
    response.close()
    response.extensions["claw_client"].close()


@pytest.fixture(scope="session")
def asgi_server(worker_env, artifacts_dir):
    """The services stack's streams server, on the test database and Redis."""
    server = AsgiServer(
        {**worker_env, "CLAW_LIVE_HEARTBEAT": "1"}, artifacts_dir / "uvicorn.log"
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def llm_server():
    with ScriptedServer() as server:
        yield server


@pytest.fixture(scope="session")
def llm_worker(worker_env, artifacts_dir, llm_server):
    from claw.celery import app

    env = {
        **worker_env,
        "LLM_BASE_URL": llm_server.url + "/v1",
        "LLM_MODEL": "test-model",
        "AI_RATE_LIMIT": "",
        "AI_STREAM_SAVE_INTERVAL": "30",
    }
    worker = CeleryProcess(
        "worker", env, ["-Q", QUEUE, "-c", "2"], artifacts_dir / "worker-live.log"
    )
    with worker.running(app):
        yield worker


@pytest.fixture
def llm(llm_server, llm_worker, asgi_server, transactional_db):
    llm_server.script.clear()
    llm_server.requests.clear()
    return llm_server
