"""Live replies over Server-Sent Events against polling (issue 17).

N conversations (BENCH_STREAM_CLIENTS, 500; 50 with --quick) each get a reply
from a threads-pool worker (BENCH_AI_CONCURRENCY threads) whose model server
streams about 50 chunks over 0.5 s, each chunk's text carrying the time it left
the model server (bench/fake_llm.py --stamp). The web server is what `make run`
serves: gunicorn with uvicorn workers on claw.asgi (BENCH_WEB_WORKERS processes).

1. REST alone: 4 clients GET /api/v1/messages/{id}/ back to back; p95.
2. Streams: every reply followed by its own SSE client
   (GET /api/v1/messages/{id}/stream/), while the same REST load runs:
   delivery latency = the client reading a chunk - the model server sending it
   (the worker receives it within a fraction of a millisecond, same machine),
   p50/p95 over every chunk; the web server's CPU per stream; the REST p95
   during the run against step 1.
3. Polling, today's way: the same number of replies, each client polling
   GET /api/v1/messages/{id}/ every 0.5 s until done: requests/s and CPU.

All clients are raw asyncio connections in this process (one event loop).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time

from bench import stack
from bench.common import Worker, row

S = "17 live streams"
DB = "claw_bench_pool_streams"
CLIENTS = int(os.environ.get("BENCH_STREAM_CLIENTS", "500"))
QUICK_CLIENTS = int(os.environ.get("BENCH_STREAM_QUICK_CLIENTS", "50"))
THREADS = int(os.environ.get("BENCH_AI_CONCURRENCY", "64"))
WEB_WORKERS = int(os.environ.get("BENCH_WEB_WORKERS", "2"))
DELAY, PIECES = 0.5, 50
REST_CLIENTS = 4
STAMP = re.compile(r"@(\d+\.\d+) ")
TIMEOUT = 120.0
POLL_TIMEOUT = 30.0  # a poller gives up on a reply after this


def asgi_web(env: dict, workers: int) -> tuple[stack.Child, str]:
    """gunicorn with uvicorn workers on claw.asgi, as `make run` starts it."""
    port = stack.free_port()
    child = stack.Child(
        [
            os.path.join(os.path.dirname(sys.executable), "gunicorn"),
            "claw.asgi:application",
            "--worker-class",
            "tasks_app.asgi_worker.StreamsWorker",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--backlog",
            "2048",
            "--no-control-socket",
        ],
        env,
        "pool-streams-web",
    )
    base = f"http://127.0.0.1:{port}"
    stack.wait_healthy(child, base, "the ASGI web server")
    return child, base


AT = re.compile(r'"at":(\d+\.\d+)')


async def follow(
    base: str, token: str, message: int, latencies: list, from_model: list
) -> dict:
    """One SSE client: read the reply's stream to its end."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"GET /api/v1/messages/{message}/stream/ HTTP/1.1\r\nHost: {host}\r\n"
            f"Accept: text/event-stream\r\nAuthorization: Token {token}\r\n\r\n"
        ).encode()
    )
    chunks, ended = 0, ""
    opened = None  # once the response began: chunks the worker received before
    # then were replayed (from Redis or the row), not delivered live
    try:
        async with asyncio.timeout(TIMEOUT):
            event = ""
            while True:
                line = await reader.readline()
                if not line:
                    break
                now = time.time()
                opened = opened or now
                text = line.decode().rstrip("\r\n")
                if text.startswith("event: "):
                    event = text[7:]
                elif text.startswith("data: ") and event == "delta":
                    received = AT.search(text)
                    if received and float(received.group(1)) >= opened:
                        latencies.append(now - float(received.group(1)))
                        chunks += 1
                    for sent in STAMP.findall(text):
                        from_model.append(now - float(sent))
                elif text.startswith("data: ") and event in ("done", "error"):
                    ended = event
                    break
    except TimeoutError:
        ended = "timeout"
    writer.close()
    return {"chunks": chunks, "ended": ended}


async def rest_load(base: str, token: str, ids: list[int], stop: asyncio.Event):
    """REST_CLIENTS clients reading messages back to back; their latencies."""
    timings: list[float] = []
    errors = 0

    async def client(n: int):
        nonlocal errors
        i = n
        while not stop.is_set():
            started = time.monotonic()
            status, _ = await stack.request(
                base, "GET", f"/api/v1/messages/{ids[i % len(ids)]}/", token
            )
            timings.append(time.monotonic() - started)
            errors += status != 200
            i += REST_CLIENTS

    await asyncio.gather(*(client(n) for n in range(REST_CLIENTS)))
    return timings, errors


async def ask_all(base: str, token: str, conversations: list[int]) -> list[int]:
    """One question per conversation; the reply message ids."""
    sem = asyncio.Semaphore(16)

    async def ask(cid: int):
        async with sem:
            status, body = await stack.request(
                base,
                "POST",
                f"/api/v1/conversations/{cid}/messages/",
                token,
                {"content": "How do streams work?"},
            )
            return body["assistant_message"]["id"] if status == 202 else None

    ids = await asyncio.gather(*(ask(c) for c in conversations))
    return [i for i in ids if i]


async def rest_only(base: str, token: str, ids: list[int], seconds: float):
    stop = asyncio.Event()
    task = asyncio.create_task(rest_load(base, token, ids, stop))
    await asyncio.sleep(seconds)
    stop.set()
    return await task


async def streams_phase(base: str, token: str, conversations: list[int], old: list):
    """Submit, follow every reply by SSE, with the REST load running."""
    stop = asyncio.Event()
    rest = asyncio.create_task(rest_load(base, token, old, stop))
    latencies: list[float] = []
    from_model: list[float] = []
    sem = asyncio.Semaphore(16)  # submitting clients, as in the replies scenario

    async def ask_and_follow(cid: int):
        # follow as soon as the question is accepted, as a chat page does
        async with sem:
            status, body = await stack.request(
                base,
                "POST",
                f"/api/v1/conversations/{cid}/messages/",
                token,
                {"content": "How do streams work?"},
            )
        if status != 202:
            return None, {"chunks": 0, "ended": f"submit {status}"}
        message = body["assistant_message"]["id"]
        return message, await follow(base, token, message, latencies, from_model)

    pairs = await asyncio.gather(*(ask_and_follow(c) for c in conversations))
    ids = [m for m, _ in pairs if m]
    results = [r for _, r in pairs]
    stop.set()
    timings, errors = await rest
    return {"ids": ids, "results": results, "latencies": latencies,
            "from_model": from_model, "rest": timings,
            "rest_errors": errors}  # fmt: skip


async def polling_phase(
    base: str, token: str, conversations: list[int], old: list
) -> dict:
    """Each reply polled every 0.5 s from its submission until it is done, as
    clients do today (the REST load running too)."""
    stop = asyncio.Event()
    rest = asyncio.create_task(rest_load(base, token, old, stop))
    sem = asyncio.Semaphore(16)
    requests = 0
    finished: list[float] = []
    started = time.monotonic()

    async def ask_and_poll(cid: int):
        nonlocal requests
        async with sem:
            status, body = await stack.request(
                base,
                "POST",
                f"/api/v1/conversations/{cid}/messages/",
                token,
                {"content": "How do streams work?"},
            )
        if status != 202:
            return None
        message = body["assistant_message"]["id"]
        deadline = time.monotonic() + POLL_TIMEOUT
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            status, body = await stack.request(
                base, "GET", f"/api/v1/messages/{message}/", token
            )
            requests += 1
            if body and body.get("status") in ("done", "failed"):
                finished.append(time.monotonic())
                break
        return message

    ids = [i for i in await asyncio.gather(*map(ask_and_poll, conversations)) if i]
    # until the last reply seen done: one that never ends (a lost submission)
    # would otherwise stretch the run to the timeout
    took = (max(finished) if finished else time.monotonic()) - started
    stop.set()
    timings, _ = await rest
    return {"ids": ids, "requests": requests, "took": took, "rest": timings,
            "finished": len(finished)}  # fmt: skip


def run(quick: bool = False) -> list[dict]:
    clients = QUICK_CLIENTS if quick else CLIENTS
    idle = stack.background_load()
    model, model_url = stack.fake_model(delay=DELAY, pieces=PIECES, stamp=True)
    with model:
        # one user asks every question: no per-user cap on replies in flight
        env = stack.stack_env(DB, model_url)
        parts = stack.prepare(env, clients * 2)
        conversations = parts["conversations"]
        token = parts["token"]
        web, base = asgi_web(env, WEB_WORKERS)
        extra = (
            "-P",
            "threads",
            "-Q",
            "ai_high_priority",
            "--prefetch-multiplier",
            "1",
        )
        with web, Worker("claw", env, "pool-streams-worker", THREADS, extra=extra) as w:
            w.wait_ready()
            # a few finished replies for the REST clients to read
            warm = asyncio.run(ask_all(base, token, conversations[:4]))
            time.sleep(3)
            meter = stack.CpuMeter(web=web.proc.pid).start()
            rest_alone, _ = asyncio.run(rest_only(base, token, warm, 8))
            rest_cpu = meter.stop()["web"] / max(len(rest_alone), 1)
            meter = stack.CpuMeter(web=web.proc.pid, worker=w.proc.pid).start()
            began = time.monotonic()
            streamed = asyncio.run(
                streams_phase(base, token, conversations[:clients], warm)
            )
            streamed["took"] = time.monotonic() - began
            streamed["cpu"] = meter.stop()
            meter = stack.CpuMeter(web=web.proc.pid, worker=w.proc.pid).start()
            polled = asyncio.run(
                polling_phase(base, token, conversations[clients:], warm)
            )
            polled["cpu"] = meter.stop()
    return rows_for(clients, idle, rest_alone, rest_cpu, streamed, polled)


def rows_for(clients, idle, rest_alone, rest_cpu, streamed, polled) -> list[dict]:
    lat = streamed["latencies"]
    done = sum(r["ended"] == "done" for r in streamed["results"])
    p95_alone = stack.percentile(rest_alone, 95) * 1000
    p95_during = stack.percentile(streamed["rest"], 95) * 1000
    web_cpu = streamed["cpu"]["web"]
    stream_cpu = max(0.0, web_cpu - rest_cpu * len(streamed["rest"]))
    busy = streamed["cpu"]["machine (all processes, all cores)"] / max(
        streamed["cpu"]["machine capacity"], 1e-9
    )
    note = (
        f"{clients} SSE clients, {done} ended with done, {len(lat)} chunks received"
        f" by the worker after their client's stream opened, read in"
        f" {streamed['took']:.1f} s; p50 {stack.percentile(lat, 50) * 1000:.1f} ms;"
        f" threads -c {THREADS}, {WEB_WORKERS} web processes; machine {busy:.0%}"
        f" busy ({idle:.0%} before the run, other work); CPU s: "
        + ", ".join(
            f"{k} {v:.2f}" for k, v in streamed["cpu"].items() if "machine" not in k
        )
    )
    poll_rate = polled["requests"] / max(polled["took"], 1e-9)
    model = streamed["from_model"]
    rows = [
        row(S, "chunk delivery p50 (worker received -> SSE client read)",
            round(stack.percentile(lat, 50) * 1000, 1), "ms"),
        row(S, "chunk delivery p95 (worker received -> SSE client read)",
            round(stack.percentile(lat, 95) * 1000, 1), "ms", "< 100",
            ("met; " if stack.percentile(lat, 95) < 0.1 else "MISSED; ") + note),
        row(S, "chunk p95 from the model server (worker queueing included)",
            round(stack.percentile(model, 95) * 1000, 1), "ms", "",
            f"p50 {stack.percentile(model, 50) * 1000:.1f} ms; {len(model)} chunks"),
        row(S, "web CPU per stream", round(stream_cpu * 1000 / max(clients, 1), 1),
            "ms", "", "its submission included; "
            f"{web_cpu:.2f} s of web CPU in the run, less"
            f" {rest_cpu * 1000:.1f} ms for each of its {len(streamed['rest'])} REST"
            f" requests (measured alone), for {clients} streamed replies"),
        row(S, "REST p95 without streams", round(p95_alone, 1), "ms", "",
            f"{len(rest_alone)} GET /messages/{{id}}/ by {REST_CLIENTS} clients"),
        row(S, "REST p95 during the streams", round(p95_during, 1), "ms",
            "<= 1.5x without",
            ("met; " if p95_during <= 1.5 * p95_alone else "MISSED; ")
            + f"{p95_during / max(p95_alone, 1e-9):.2f}x; {len(streamed['rest'])}"
            f" requests, {streamed['rest_errors']} errors"),
        row(S, "REST p95 during the polling", round(
            stack.percentile(polled["rest"], 95) * 1000, 1), "ms", "",
            f"the same replies followed by polling; {len(polled['rest'])} requests"),
        row(S, "polling every 0.5 s: requests/s", round(poll_rate, 1), "req/s", "",
            f"{polled['requests']} GET /messages/{{id}}/ for {len(polled['ids'])}"
            f" replies ({polled['finished']} seen done) in {polled['took']:.1f} s"
            " (streams: one request a reply)"),
        row(S, "polling: web CPU per reply",
            round(polled["cpu"]["web"] * 1000 / max(len(polled["ids"]), 1), 1), "ms",
            "", "submission, polls and the REST load; streams: web CPU per stream"),
    ]  # fmt: skip
    return rows
