"""A real local HTTP server whose answers each test scripts."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import close_old_connections


class ScriptedServer:
    """Answers each POST with the next scripted response; records the requests.

    A response is a dict: status, json (a body), sse (a list of event dicts, sent
    as `data:` lines with a pause between them, then [DONE]), sleep (seconds
    before answering), stall ({"after": n, "seconds": s}: the stream goes
    quiet for s seconds after its nth event), or chunked (true: the stream is
    sent with chunked transfer encoding, as keep-alive servers do, instead of
    being read until the server closes it).
    """

    def __init__(self):
        self.script: list[dict] = []
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.requests.append(
                    {"path": self.path, "body": body, "headers": dict(self.headers)}
                )
                step = (
                    outer.script.pop(0) if outer.script else {"status": 200, "json": {}}
                )
                time.sleep(step.get("sleep", 0))
                if "sse" in step:
                    # the client may go away (a killed worker, a deadline)
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self.stream(step)
                    self.close_connection = True
                    return
                data = json.dumps(step.get("json", {})).encode()
                self.send_response(step.get("status", 200))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def stream(self, step):
                chunked = step.get("chunked", False)
                self.send_response(step.get("status", 200))
                self.send_header("Content-Type", "text/event-stream")
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                stall = step.get("stall") or {}
                for n, event in enumerate(step["sse"], 1):
                    self.send(f"data: {json.dumps(event)}\n\n".encode(), chunked)
                    time.sleep(step.get("pause", 0))
                    if n == stall.get("after"):
                        time.sleep(stall["seconds"])
                self.send(b"data: [DONE]\n\n", chunked)
                if chunked:
                    self.send(b"", chunked)

            def send(self, data: bytes, chunked: bool):
                if chunked:
                    data = b"%x\r\n%s\r\n" % (len(data), data)
                self.wfile.write(data)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():
    with ScriptedServer() as server:
        yield server


def chunk(text: str, model: str = "test-model") -> dict:
    return {"model": model, "choices": [{"index": 0, "delta": {"content": text}}]}


def sse(*pieces: str, usage: dict | None = None, **step) -> dict:
    """A scripted streamed answer made of these text pieces."""
    events = [chunk(piece) for piece in pieces]
    if usage:
        events.append({"model": "test-model", "choices": [], "usage": usage})
    return {"sse": events, **step}


def in_threads(target, count: int) -> list:
    """Run target in count threads released at once; return what each returned.

    Each thread has its own database connection (closed at the end), so this
    races real transactions against each other.
    """
    barrier, results = threading.Barrier(count), []

    def run():
        try:
            barrier.wait(timeout=10)
            results.append(target())
        finally:
            close_old_connections()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.fixture
def no_publish(monkeypatch):
    """Submissions are recorded but never reach the broker (our seam)."""
    from tasks_app import services

    published = []
    monkeypatch.setattr(
        services, "publish", lambda record, payload=None: published.append(record)
    )
    return published
