"""Scenario 2: the API under a bounded local load, against a real gunicorn.

20 clients for 30 s, each doing what a chat client does: post a question
(POST /api/v1/conversations/{id}/messages/), poll the reply
(GET /api/v1/messages/{id}/) every POLL seconds until it is done, read its task
(GET /api/v1/tasks/{id}/), think for THINK seconds, ask again. Workers are on:
a threads-pool AI worker answers every question through the local model server
(bench/fake_llm.py, 0.5 s per answer), so the polls see real state changes and
the machine does the whole job, not only the API's part. Latency is measured by
the client, from before connecting to the last byte; an error is anything but
the 202 or 200 expected (or no answer within 30 s). Throttle rates are raised by
environment (stack.stack_env). A 3 s warm-up is not counted.

Then, for information, the same 20 clients with no pauses for 10 s: the most
requests per second gunicorn serves here, and the latency at that load.
"""

from __future__ import annotations

import asyncio
import time

from bench import stack
from bench.common import Worker, row

S = "2 API load"
CLIENTS = 20
DURATION, QUICK_DURATION, WARMUP, SATURATION = 30.0, 8.0, 3.0, 10.0
POLL, THINK = 0.25, 0.5
DB = "claw_bench_pool_api"


class Load:
    """Latencies by kind of request, and the errors, of one phase."""

    def __init__(self, until: float, paced: bool):
        self.until, self.paced = until, paced
        self.latencies: dict[str, list[float]] = {
            "submit": [],
            "message": [],
            "task": [],
        }
        self.errors: list[str] = []

    async def call(self, kind, expect, base, method, path, token, body=None):
        started = time.perf_counter()
        status, payload = await stack.request(base, method, path, token, body)
        elapsed = time.perf_counter() - started
        if status != expect:
            self.errors.append(f"{kind} {status}")
            return None
        self.latencies[kind].append(elapsed)
        return payload

    async def pause(self, seconds: float) -> None:
        if self.paced:
            await asyncio.sleep(seconds)

    async def client(self, base: str, token: str, conversation: int) -> None:
        n = 0
        while time.monotonic() < self.until:
            n += 1
            posted = await self.call(
                "submit", 202, base, "POST",
                f"/api/v1/conversations/{conversation}/messages/", token,
                {"content": f"Question {n}: what does the ledger keep?"},
            )  # fmt: skip
            if posted is None:
                await self.pause(THINK)
                continue
            reply = posted["assistant_message"]
            while reply["status"] not in ("done", "failed"):
                if time.monotonic() >= self.until:
                    return
                await self.pause(POLL)
                path = f"/api/v1/messages/{reply['id']}/"
                reply = await self.call("message", 200, base, "GET", path, token)
                if reply is None:
                    break
            path = f"/api/v1/tasks/{posted['task']['id']}/"
            await self.call("task", 200, base, "GET", path, token)
            await self.pause(THINK)


async def load(base: str, setup: dict, seconds: float, paced: bool) -> Load:
    phase = Load(time.monotonic() + seconds, paced)
    token, conversations = setup["token"], setup["conversations"]
    await asyncio.gather(*(phase.client(base, token, c) for c in conversations))
    return phase


def run(quick: bool = False) -> list[dict]:
    duration = QUICK_DURATION if quick else DURATION
    model, model_url = stack.fake_model()
    with model:
        env = stack.stack_env(DB, model_url)
        setup = stack.prepare(env, CLIENTS)
        web, base = stack.gunicorn(env)
        extra = (
            "-P",
            "threads",
            "-Q",
            "ai_high_priority",
            "--prefetch-multiplier",
            "1",
        )
        with web, Worker("claw", env, "pool-api-worker", 32, extra=extra) as worker:
            worker.wait_ready()
            idle = stack.background_load()
            asyncio.run(load(base, setup, WARMUP, paced=True))
            meter = stack.CpuMeter(worker=worker.proc.pid, gunicorn=web.proc.pid)
            meter.start()
            paced = asyncio.run(load(base, setup, duration, paced=True))
            cpu = meter.stop()
            flat = 3.0 if quick else SATURATION
            flat_out = asyncio.run(load(base, setup, flat, paced=False))
    return paced_rows(paced, duration, cpu, idle) + saturation_rows(flat_out, flat)


def ms(values: list[float], p: float) -> float:
    return round(stack.percentile(values, p) * 1000, 1)


def paced_rows(phase: Load, duration: float, cpu: dict, idle: float) -> list[dict]:
    lat = phase.latencies
    status = lat["message"] + lat["task"]
    total = sum(len(v) for v in lat.values())
    busy = cpu["machine (all processes, all cores)"] / cpu["machine capacity"]
    context = (
        f"{CLIENTS} clients, {duration:g} s, workers on; {total} requests"
        f" ({total / duration:.0f}/s); machine {busy:.0%} busy"
        f" ({idle:.0%} before the run, other work)"
    )
    met = {
        "submit": ms(lat["submit"], 95) < 50,
        "status": ms(status, 95) < 20,
        "errors": not phase.errors,
    }
    note = "met" if met["submit"] else "MISSED"
    return [
        row(S, "submit p95", ms(lat["submit"], 95), "ms", "< 50",
            f"{note}; p50 {ms(lat['submit'], 50)} ms; {len(lat['submit'])}"
            f" submissions; {context}"),
        row(S, "status p95", ms(status, 95), "ms", "< 20",
            ("met" if met["status"] else "MISSED")
            + f"; p50 {ms(status, 50)} ms; messages p95 {ms(lat['message'], 95)}"
            f" ms ({len(lat['message'])}), tasks p95 {ms(lat['task'], 95)} ms"
            f" ({len(lat['task'])})"),
        row(S, "errors", len(phase.errors), "", "0",
            ("met" if met["errors"] else f"MISSED: {phase.errors[:5]}")),
    ]  # fmt: skip


def saturation_rows(phase: Load, seconds: float) -> list[dict]:
    lat = phase.latencies
    status = lat["message"] + lat["task"]
    total = sum(len(v) for v in lat.values())
    return [
        row(S, "no pauses: requests/s", round(total / seconds), "req/s", "",
            f"information: {CLIENTS} clients without think time for {seconds:g} s;"
            f" submit p95 {ms(lat['submit'], 95)} ms, status p95 {ms(status, 95)} ms,"
            f" errors {len(phase.errors)}"),
    ]  # fmt: skip
