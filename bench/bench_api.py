"""Scenario 2: the API under a bounded local load, against a real gunicorn.

20 clients, each doing what a chat client does: post a question
(POST /api/v1/conversations/{id}/messages/), poll the reply
(GET /api/v1/messages/{id}/) every POLL seconds until it is done (POLLS times at
most), read its task (GET /api/v1/tasks/{id}/), think for THINK seconds, ask
again; every pause is jittered (50-150 %), so the clients do not move in step. Latency is measured by the client, from before connecting to the last
byte; an error is anything but the 202 or 200 expected (or no answer within
30 s). Throttle rates are raised by environment (stack.stack_env). Three phases:

1. workers on, 20 s (for information): a threads-pool AI worker answers every
   question through the local model server (bench/fake_llm.py, 0.5 s an
   answer), so polls see real state changes and the API shares the two cores
   with the worker, as it would not in production;
2. workers off, 30 s: the API alone; the targets are read from this phase;
3. workers off, no pauses, 10 s (for information): the most requests per second
   gunicorn serves here, and the latency at that load.

A 3 s warm-up (workers on) is not counted.
"""

from __future__ import annotations

import asyncio
import random
import time

from bench import stack
from bench.common import Worker, row

S = "2 API load"
CLIENTS = 20
# seconds of each phase: full, quick
WARMUP, WITH_WORKERS, API_ONLY, NO_PAUSES = (3, 2), (20, 4), (30, 6), (10, 3)
POLL, POLLS, THINK = 0.25, 4, 0.5
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
        self.seconds, self.cpu = 0.0, {}
        self.random = random.Random(9)  # the same pauses in every run

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
            # People do not act in step: 50-150 % of the pause, so 20 clients do
            # not all arrive in the same few milliseconds.
            await asyncio.sleep(seconds * self.random.uniform(0.5, 1.5))

    async def client(self, base: str, token: str, conversation: int) -> None:
        n = 0
        await self.pause(THINK)  # and do not start in step either
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
            reply, polls = posted["assistant_message"], 0
            while reply["status"] not in ("done", "failed") and polls < POLLS:
                if time.monotonic() >= self.until:
                    return
                polls += 1
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
    idle = stack.background_load()  # before any process of ours starts
    model, model_url = stack.fake_model()
    with model:
        env = stack.stack_env(DB, model_url)
        setup = stack.prepare(env, CLIENTS)
        web, base = stack.gunicorn(env)
        with web:
            extra = ("-P", "threads", "-Q", "ai_high_priority")
            with Worker("claw", env, "pool-api-worker", 32, extra=extra) as worker:
                worker.wait_ready()
                asyncio.run(load(base, setup, WARMUP[quick], paced=True))
                meter = stack.CpuMeter(worker=worker.proc.pid, gunicorn=web.proc.pid)
                with_workers = measured(meter, base, setup, WITH_WORKERS[quick], True)
            meter = stack.CpuMeter(gunicorn=web.proc.pid)
            api_only = measured(meter, base, setup, API_ONLY[quick], True)
            meter = stack.CpuMeter(gunicorn=web.proc.pid)
            no_pauses = measured(meter, base, setup, NO_PAUSES[quick], False)
    rows = phase_rows(api_only, idle, targets=True)
    rows += phase_rows(with_workers, idle, label="workers on: ")
    rows += phase_rows(no_pauses, idle, label="workers off, no pauses: ")
    return rows


def measured(meter, base: str, setup: dict, seconds: float, paced: bool) -> Load:
    meter.start()
    phase = asyncio.run(load(base, setup, seconds, paced))
    phase.seconds, phase.cpu = seconds, meter.stop()
    return phase


def ms(values: list[float], p: float) -> float:
    return round(stack.percentile(values, p) * 1000, 1)


def phase_rows(
    phase: Load, idle: float, label: str = "", targets: bool = False
) -> list[dict]:
    lat, cpu = phase.latencies, phase.cpu
    status = lat["message"] + lat["task"]
    total = sum(len(v) for v in lat.values())
    busy = cpu["machine (all processes, all cores)"] / cpu["machine capacity"]
    context = (
        f"{CLIENTS} clients, {phase.seconds:g} s; {total} requests"
        f" ({total / phase.seconds:.0f}/s), {len(phase.errors)} errors;"
        f" gunicorn {cpu['gunicorn'] * 1000 / max(total, 1):.1f} ms CPU a request;"
        f" machine {busy:.0%} busy ({idle:.0%} before the run, other work)"
    )
    submit_p95, status_p95 = ms(lat["submit"], 95), ms(status, 95)
    detail = {
        "submit": f"p50 {ms(lat['submit'], 50)} ms; {len(lat['submit'])} submissions",
        "status": f"p50 {ms(status, 50)} ms; messages p95 {ms(lat['message'], 95)} ms"
        f" ({len(lat['message'])}), tasks p95 {ms(lat['task'], 95)} ms"
        f" ({len(lat['task'])})",
    }
    if not targets:
        return [
            row(S, f"{label}submit p95", submit_p95, "ms", "", detail["submit"]),
            row(S, f"{label}status p95", status_p95, "ms", "",
                f"{detail['status']}; {context}"),
        ]  # fmt: skip
    verdict = {True: "met", False: "MISSED"}
    return [
        row(S, "workers off: submit p95", submit_p95, "ms", "< 50",
            f"{verdict[submit_p95 < 50]}; {detail['submit']}; {context}"),
        row(S, "workers off: status p95", status_p95, "ms", "< 20",
            f"{verdict[status_p95 < 20]}; {detail['status']}"),
        row(S, "workers off: errors", len(phase.errors), "", "0",
            verdict[not phase.errors] + (f": {phase.errors[:5]}" if phase.errors else "")),
    ]  # fmt: skip
