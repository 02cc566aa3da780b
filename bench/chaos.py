"""Chaos under load (issue 20): `make chaos`.

    python -m bench.chaos [--seconds 300] [--seed 20] [--faults 10] [--kinds ...]
                          [--json] [--write]

Starts its own PostgreSQL and Redis (bench/private.py: never the machine's 5432
or 6379), a real gunicorn, the local streaming model server (bench/fake_llm.py),
a prefork worker on every queue but the threads ones and a threads worker on
those (as `make run`), then for ``seconds`` keeps a mixed load flowing:

- AI replies through the API (POST /api/v1/conversations/{id}/messages/, the
  conversations use the `openai` provider pointed at the model server);
- documents through the API (POST /api/v1/documents/, vectorized, hashing);
- writing jobs through the API: an outline job, then a document job from it
  that adds its document to the knowledge base (vectorized too);
- push notifications (claw.services.notify: there is no API to send one), whose
  webhook is this process: it counts each delivery by notification id.

Meanwhile a seeded schedule injects faults at random times: kill -9 of a prefork
pool child, kill -9 of a worker's main process (its group, then a restart), a
Redis restart (SIGTERM, as `docker restart`; AOF on), a PostgreSQL restart
(pg_ctl stop -m fast, start) and a 30 s PostgreSQL outage. The health check runs
every 5 s, as beat would run it (beat's period is 30 min by default).

Clients behave as the README tells them: a 503 (database outage), a 429 or no
answer is retried after Retry-After with the same Idempotency-Key; a 500 is a
failure. After the load, the run waits for the ledger to settle and counts, per
accepted submission, its final state and its effects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter

from bench import private, stack
from bench.common import ARTIFACTS, ROOT, Worker, base_env, run_py

DB = "claw_chaos"
KINDS = ("kill_child", "kill_main", "redis_restart", "pg_restart", "pg_outage")
OUTAGE_SECONDS = 30
# Covers the slowest recovery: a document job whose chord never called back is
# re-queued by the health check after JOBS_DOCUMENT_TIME_LIMIT (300 s).
SETTLE_SECONDS = float(os.environ.get("CHAOS_SETTLE_SECONDS", "360"))
PIECES = 8  # words of each model answer: "word0 ... word7 "
EXPECTED_REPLY = "".join(f"word{n} " for n in range(PIECES))
DOC_TEXT = (
    "Workers take tasks from Redis queues and record every state in PostgreSQL. "
    "A reply streams from the model server into its message. "
    "Documents are split into chunks and embedded for search. "
) * 8


def env_for(pg: private.Postgres, redis: private.Redis, hook: str, model: str) -> dict:
    return base_env(
        DATABASE_URL=pg.url(DB),
        CELERY_BROKER_URL=redis.url,
        DJANGO_SETTINGS_MODULE="claw.settings",
        DEBUG="false",
        HTTPS_ONLY="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        LLM_PROVIDER="extractive",  # writing jobs; conversations choose openai
        LLM_BASE_URL=model,
        LLM_MODEL="bench-model",
        AI_RATE_LIMIT="",
        KNOWLEDGE_VECTORIZE_RATE_LIMIT="",  # 5/60 would defer most documents
        AI_MAX_REPLIES_IN_FLIGHT="0",
        API_THROTTLE_USER="100000/s",
        API_THROTTLE_SUBMIT="100000/s",
        KNOWLEDGE_EMBEDDING_PROVIDER="hashing",
        NOTIFY_PUSH_WEBHOOK_URL=hook,
        # A killed worker's messages come back after the visibility timeout (and
        # one unacked sweep); it must outlast the 30 s outage, during which a
        # running task waits for the database instead of renewing its lease.
        CELERY_VISIBILITY_TIMEOUT="45",
        CELERY_UNACKED_RESTORE_INTERVAL="2",
        CELERY_UNACKED_RESTORE_THROTTLE="2",
        CLAW_LEASE_SECONDS="10",
        CLAW_REPUBLISH_PENDING_AFTER="20",
        CLAW_DATABASE_OUTAGE_SECONDS="90",
        CELERY_WORKER_CONCURRENCY="2",
    )


# --- the stack ------------------------------------------------------------------


class Stack:
    def __init__(self, env: dict):
        self.env = env
        self.workers: dict[str, Worker] = {}
        self.starts = Counter()

    def start_worker(self, name: str) -> None:
        from django.conf import settings

        threads = list(settings.CLAW_THREADS_QUEUES)
        if name == "ai":
            queues = threads
            extra = ("-P", "threads", "--prefetch-multiplier", "1")
            concurrency = 16
        else:
            queues = [q for q in settings.CLAW_QUEUES if q not in threads]
            extra, concurrency = (), 2
        self.starts[name] += 1
        worker = Worker(
            "claw",
            self.env,
            f"chaos-{name}-{self.starts[name]}",
            concurrency,
            extra=("-Q", ",".join(queues), *extra),
        )
        worker.wait_ready(90)
        self.workers[name] = worker

    def kill_main(self, name: str) -> None:
        """kill -9 the worker's whole process group (a crashed container), restart."""
        worker = self.workers[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
        worker.log.close()
        self.start_worker(name)

    def kill_child(self) -> bool:
        main = self.workers["default"].proc.pid
        children = []
        for task in os.listdir(f"/proc/{main}/task"):
            with open(f"/proc/{main}/task/{task}/children") as kids:
                children += [int(k) for k in kids.read().split()]
        if not children:
            return False
        os.kill(random.choice(children), signal.SIGKILL)
        return True

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()


# --- faults ----------------------------------------------------------------------


def schedule(seed: int, seconds: float, faults: int, kinds: list[str]) -> list:
    """(time, kind) pairs: every kind once before any twice, in a seeded order, at
    seeded times over the load (the last ones early enough to end within it)."""
    rng = random.Random(seed)
    order: list[str] = []
    while len(order) < faults:
        round_ = list(kinds)
        rng.shuffle(round_)
        order += round_
    order = order[:faults]
    end = seconds - (OUTAGE_SECONDS + 5 if "pg_outage" in order else 5)
    times = sorted(rng.uniform(seconds * 0.05, max(end, seconds * 0.1)) for _ in order)
    return list(zip(times, order, strict=True))


class Injector(threading.Thread):
    def __init__(self, plan, stack_: Stack, pg, redis, started: float):
        super().__init__(daemon=True)
        self.plan, self.stack, self.pg, self.redis = plan, stack_, pg, redis
        self.started = started
        self.done: list[tuple[float, str, str]] = []
        self.errors: list[str] = []
        self.planned = threading.Event()  # every fault injected
        # A worker restarted here gets SIGTERM when this thread ends
        # (PR_SET_PDEATHSIG follows the thread that forked it): it lives
        # until the stack stops.
        self.release = threading.Event()

    def run(self) -> None:
        rng = random.Random(len(self.plan))
        for at, kind in self.plan:
            time.sleep(max(0.0, self.started + at - time.monotonic()))
            began = time.monotonic() - self.started
            try:
                note = self.inject(kind, rng)
            except Exception as exc:  # reported, the run goes on
                self.errors.append(f"{kind} at {began:.0f}s: {exc!r}")
                continue
            self.done.append((began, kind, note))
            print(f"[chaos] {began:6.1f}s {kind} {note}", flush=True)
        self.planned.set()
        self.release.wait()

    def inject(self, kind: str, rng: random.Random) -> str:
        if kind == "kill_child":
            return "" if self.stack.kill_child() else "(no child)"
        if kind == "kill_main":
            name = rng.choice(["default", "ai"])
            self.stack.kill_main(name)
            return name
        if kind == "redis_restart":
            self.redis.restart()
            return ""
        if kind == "pg_restart":
            self.pg.stop()
            self.pg.start()
            return ""
        self.pg.stop()
        time.sleep(OUTAGE_SECONDS)
        self.pg.start()
        return f"{OUTAGE_SECONDS}s"


# --- load ------------------------------------------------------------------------


class Load:
    def __init__(self, base: str, token: str, setup: dict, until: float):
        self.base, self.token, self.setup, self.until = base, token, setup, until
        self.answers = Counter()  # status -> count (every answer, retries too)
        self.replies: list[int] = []
        self.documents: list[int] = []
        self.jobs: list[str] = []
        self.failures: list[str] = []

    async def post(self, path: str, body: dict, ok=(200, 201, 202)) -> dict | None:
        """POST until answered, as a client should: the same Idempotency-Key on
        every retry; None for a 500 or another refusal."""
        key = str(uuid.uuid4())
        give_up = self.until + 120
        while time.monotonic() < give_up:
            status, answer = await stack.request(
                self.base,
                "POST",
                path,
                self.token,
                body,
                headers={"Idempotency-Key": key},
            )
            self.answers[status] += 1
            if status in ok:
                return answer
            if status in (0, 429, 503):
                await asyncio.sleep(1.0 if status == 0 else 2.0)
                continue
            self.failures.append(f"POST {path} {status} {str(answer)[:200]}")
            return None
        return None

    async def get(self, path: str) -> dict | None:
        status, answer = await stack.request(self.base, "GET", path, self.token)
        self.answers[status] += 1
        if status >= 500 and status != 503:
            self.failures.append(f"GET {path} {status} {str(answer)[:200]}")
        return answer if status == 200 else None

    async def replier(self, n: int) -> None:
        conversations = self.setup["conversations"]
        i = 0
        while time.monotonic() < self.until:
            cid = conversations[(n + i * 3) % len(conversations)]
            i += 1
            body = {"content": f"Question {n}.{i}: how do workers recover?"}
            answer = await self.post(f"/api/v1/conversations/{cid}/messages/", body)
            if answer:
                self.replies.append(answer["assistant_message"]["id"])
            await asyncio.sleep(0.5)

    async def documenter(self) -> None:
        i = 0
        while time.monotonic() < self.until:
            i += 1
            body = {
                "knowledge_base": self.setup["knowledge_base"],
                "title": f"chaos document {i}",
                "content": f"Document {i}. " + DOC_TEXT,
                "vectorize": True,
            }
            answer = await self.post("/api/v1/documents/", body)
            if answer:
                self.documents.append(answer["id"])
            await asyncio.sleep(1.0)

    async def writer(self) -> None:
        i = 0
        while time.monotonic() < self.until:
            i += 1
            job = f"chaos-{i}"
            body = {
                "job_id": job,
                "task_prompt": "How do workers recover from faults?",
                "knowledge_base_ids": [self.setup["knowledge_base"]],
            }
            if not await self.post("/api/v1/jobs/outline", body):
                continue
            self.jobs.append(job)
            state = await self.wait_job(job)
            if state != "succeeded" or time.monotonic() > self.until:
                continue
            body = {
                "job_id": f"{job}-doc",
                "outline": job,
                "knowledge_base_id": self.setup["knowledge_base"],
            }
            if await self.post("/api/v1/jobs/document", body):
                self.jobs.append(f"{job}-doc")

    async def wait_job(self, job: str) -> str:
        while time.monotonic() < self.until + 60:
            answer = await self.get(f"/api/v1/jobs/{job}/")
            if answer and answer["state"] in ("succeeded", "failed", "cancelled"):
                return answer["state"]
            await asyncio.sleep(1.0)
        return ""

    async def run(self, notifier) -> None:
        await asyncio.gather(
            *(self.replier(n) for n in range(3)),
            self.documenter(),
            self.writer(),
            notifier(self.until),
        )


class Webhook:
    """The push channel's endpoint: counts deliveries per notification id, and
    applies each Idempotency-Key once, as a receiver of at-least-once webhooks
    should (a worker killed between the POST and marking the notification sent
    sends it again, with the same key)."""

    def __init__(self):
        self.deliveries = Counter()
        self.keys: dict[object, set] = {}

    def applied_twice(self) -> int:
        """Deliveries a deduplicating receiver would still apply twice: one
        notification under two keys, or repeated without a key."""
        return sum(
            self.deliveries[id_] - 1 if None in keys else len(keys) - 1
            for id_, keys in self.keys.items()
        )

    async def serve(self, reader, writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(header(head, "content-length") or 0)
            body = json.loads(await reader.readexactly(length)) if length else {}
            self.deliveries[body.get("id")] += 1
            self.keys.setdefault(body.get("id"), set()).add(
                header(head, "idempotency-key")
            )
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


def header(head: bytes, wanted: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == wanted:
            return value.strip()
    return None


def notify_with_retry(user_id: int, i: int) -> None:
    """One push notification, retried while the database is away (a retry after
    a lost commit stores a second notification: both are counted)."""
    from django.contrib.auth import get_user_model
    from django.db import close_old_connections, connection

    from claw import services

    for _ in range(60):
        try:
            user = get_user_model().objects.get(pk=user_id)
            services.notify(user, "push", f"chaos {i}", "body")
            return
        except Exception:  # the database restarting under us
            connection.close()
            time.sleep(1)
        finally:
            close_old_connections()


async def notifier(user_id: int, until: float) -> None:
    i = 0
    while time.monotonic() < until:
        i += 1
        await asyncio.to_thread(notify_with_retry, user_id, i)
        await asyncio.sleep(1.0)


# --- the ledger ------------------------------------------------------------------


def with_reconnect(call, default=None):
    from django.db import connection

    try:
        return call()
    except Exception:  # the server restarted under this connection
        connection.close()
        return default


class HealthLoop(threading.Thread):
    """check_task_health every 5 s, as beat would run it."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stopped = threading.Event()

    def run(self) -> None:
        from tasks_app import maintenance

        while not self.stopped.wait(5):
            with_reconnect(lambda: maintenance.check_health(alerts_enabled=False))


def unfinished(load: Load) -> dict[str, int]:
    from claw.models import Message, Notification
    from knowledge.models import Document
    from tasks_app.models import TaskRecord
    from writing.models import WritingJob

    return {
        "replies": Message.objects.filter(pk__in=load.replies)
        .exclude(status__in=["done", "failed"])
        .count(),
        "documents": Document.objects.filter(pk__in=load.documents)
        .exclude(status__in=["ready", "failed"])
        .count(),
        "jobs": WritingJob.objects.filter(job_id__in=load.jobs)
        .exclude(state__in=["succeeded", "failed", "cancelled"])
        .count(),
        "notifications": Notification.objects.exclude(status__in=["sent", "failed"])
        .filter(channel="push")
        .count(),
        "records": TaskRecord.objects.exclude(
            state__in=TaskRecord.FINAL_STATES
        ).count(),
    }


def settle(load: Load, timeout: float) -> tuple[dict, float]:
    started = time.monotonic()
    left = {"unknown": -1}
    while time.monotonic() - started < timeout:
        left = with_reconnect(lambda: unfinished(load), {"unknown": -1})
        if not any(left.values()):
            break
        time.sleep(2)
    return left, time.monotonic() - started


def count(load: Load, webhook: Webhook) -> dict:
    from django.db.models import Count

    from claw.models import Message, Notification
    from knowledge.models import Chunk, Document
    from tasks_app.models import TaskRecord
    from writing.models import WritingJob

    replies = Message.objects.filter(pk__in=load.replies)
    notifications = Notification.objects.filter(channel="push")
    jobs = WritingJob.objects.filter(job_id__in=load.jobs)
    documents = Document.objects.filter(pk__in=load.documents)
    # Each effect once: a reply's text once (not two runs' text), a document's
    # chunks once (no position twice), a notification's webhook once, a document
    # job's document once.
    doubled_replies = replies.filter(status="done").exclude(content=EXPECTED_REPLY)
    doubled_chunks = (
        Chunk.objects.filter(document__in=documents)
        .values("document_id", "position")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    job_documents = Counter(
        Document.objects.filter(source__startswith="writing job ").values_list(
            "source", flat=True
        )
    )
    sent = set(notifications.filter(status="sent").values_list("pk", flat=True))
    states = {
        "replies": Counter(replies.values_list("status", flat=True)),
        "documents": Counter(documents.values_list("status", flat=True)),
        "jobs": Counter(jobs.values_list("state", flat=True)),
        "notifications": Counter(notifications.values_list("status", flat=True)),
        "records": Counter(TaskRecord.objects.values_list("state", flat=True)),
    }
    duplicated = {
        "reply text": doubled_replies.count(),
        "document chunks": doubled_chunks.count(),
        "job documents": sum(n - 1 for n in job_documents.values() if n > 1),
        "webhook deliveries": webhook.applied_twice(),
    }
    return {
        "states": {k: dict(v) for k, v in states.items()},
        "duplicated_by_kind": duplicated,
        # the same key again: at-least-once delivery, dropped by the receiver
        "webhook_repeats": sum(n - 1 for n in webhook.deliveries.values() if n > 1),
        "sent_not_delivered": len(sent - set(webhook.deliveries)),
        "failed_detail": failed_detail(),
    }


def failed_detail() -> list[str]:
    from tasks_app.models import TaskRecord

    rows = TaskRecord.objects.exclude(state="SUCCESS").values_list(
        "name", "state", "error"
    )
    return [f"{n} {s}: {(e or '')[:160]}" for n, s, e in rows[:20]]


# --- the run ---------------------------------------------------------------------


def prepare(env: dict) -> dict:
    out = run_py(["-m", "bench.chaos", "prepare"], env)
    return json.loads(out.strip().splitlines()[-1])


def _prepare_child() -> dict:
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from claw import conversations
    from knowledge import services
    from tasks_app import tokens

    user = get_user_model().objects.create_user("chaos-client", password="-")
    _, key = tokens.issue(user, name="chaos")
    kb = services.create_knowledge_base(
        user, name="chaos", embedding_provider="hashing"
    )
    # outline jobs find passages from the start
    services.vectorize_now(
        [
            services.add_document(
                kb, title=f"seed {n}", content=DOC_TEXT, vectorize=False
            )
            for n in range(3)
        ]
    )
    ids = [
        conversations.create_conversation(
            user, title=f"chaos {n}", provider="openai"
        ).pk
        for n in range(6)
    ]
    return {
        "token": key,
        "user": user.pk,
        "knowledge_base": kb.pk,
        "conversations": ids,
    }


def run(seconds: float, seed: int, faults: int, kinds: list[str]) -> dict:
    pg = private.Postgres(stack.free_port()).init(DB)
    redis = private.Redis(stack.free_port(), pg.folder).start()
    children: list = []
    stack_ = injector = None
    try:
        model, model_url = stack.fake_model(delay=1.0, pieces=PIECES)
        children.append(model)
        webhook = Webhook()
        loop = asyncio.new_event_loop()
        hook_server = loop.run_until_complete(
            asyncio.start_server(webhook.serve, "127.0.0.1", 0)
        )
        hook = f"http://127.0.0.1:{hook_server.sockets[0].getsockname()[1]}/push"
        env = env_for(pg, redis, hook, model_url)
        run_py(["manage.py", "migrate", "--noinput", "-v", "0"], env)
        setup = prepare(env)
        os.environ.update({k: v for k, v in env.items() if k not in ("PYTHONPATH",)})
        import django

        django.setup()
        web, base = stack.gunicorn(env, workers=2)
        children.append(web)
        stack_ = Stack(env)
        stack_.start_worker("default")
        stack_.start_worker("ai")
        health = HealthLoop()
        health.start()

        plan = schedule(seed, seconds, faults, kinds)
        started = time.monotonic()
        injector = Injector(plan, stack_, pg, redis, started)
        injector.start()
        load = Load(base, setup["token"], setup, started + seconds)
        loop.run_until_complete(load.run(lambda until: notifier(setup["user"], until)))
        injector.planned.wait()
        load_seconds = time.monotonic() - started
        # keep serving the webhook while the ledger settles
        left, settled_in = settle_serving(loop, load)
        health.stopped.set()
        counted = with_reconnect(lambda: count(load, webhook), {})
        hook_server.close()
    finally:
        if injector:
            injector.release.set()
        if stack_:
            stack_.stop()
        for child in children:
            child.stop()
        redis.stop()
        pg.remove()
    return summary(
        seed, seconds, load, injector, left, settled_in, counted, load_seconds
    )


def settle_serving(loop, load: Load) -> tuple[dict, float]:
    return loop.run_until_complete(asyncio.to_thread(settle, load, SETTLE_SECONDS))


def summary(seed, seconds, load, injector, left, settled_in, counted, load_seconds):
    accepted = {
        "replies": len(load.replies),
        "documents": len(load.documents),
        "jobs": len(load.jobs),
        "notifications": sum(
            counted.get("states", {}).get("notifications", {}).values()
        ),
    }
    lost = sum(v for k, v in left.items() if k != "records")
    duplicated = sum(counted.get("duplicated_by_kind", {}).values())
    failed = sum(
        n
        for kind in counted.get("states", {}).values()
        for state, n in kind.items()
        if state in ("failed", "FAILURE", "REVOKED")
    )
    return {
        "seed": seed,
        "seconds": seconds,
        "load_seconds": round(load_seconds, 1),
        "accepted": accepted,
        "faults": [
            f"{at:.0f}s {kind} {note}".strip() for at, kind, note in injector.done
        ],
        "fault_errors": injector.errors,
        "lost": lost,
        "duplicated": duplicated,
        "not_terminal": left.get("records", -1),
        "ended_failed": failed,
        "answers_5xx": sum(n for s, n in load.answers.items() if s >= 500 and s != 503),
        "answers_503": load.answers.get(503, 0),
        "no_answer": load.answers.get(0, 0),
        "answers": {str(k): v for k, v in sorted(load.answers.items())},
        "failures": load.failures[:20],
        "settled_in": round(settled_in, 1),
        "left": left,
        **counted,
    }


def table(result: dict) -> str:
    accepted = result["accepted"]
    rows = [
        ("submissions accepted", f"{sum(accepted.values())} "
         f"({', '.join(f'{v} {k}' for k, v in accepted.items())})", ""),
        ("faults injected", len(result["faults"]), ">= 10 in 5 min"),
        ("lost (accepted, never terminal)", result["lost"], "0"),
        ("duplicated effects", result["duplicated"], "0"),
        ("webhook repeats (same Idempotency-Key, dropped)",
         result.get("webhook_repeats", 0), ""),
        ("records not terminal after settle", result["not_terminal"], "0"),
        ("ended failed (objects and records)", result["ended_failed"], "0"),
        ("5xx answers (500s; 503s retried)", f"{result['answers_5xx']} "
         f"(503: {result['answers_503']}, no answer: {result['no_answer']})", "0"),
    ]  # fmt: skip
    lines = ["| metric | value | target |", "| --- | --- | --- |"]
    lines += [f"| {m} | {v} | {t} |" for m, v, t in rows]
    return "\n".join(lines)


def write_results(result: dict) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else ""
    marker = "\n## CHAOS\n"
    text = text.split(marker)[0].rstrip() + "\n" + marker
    text += (
        f"\n`make chaos` (CHAOS_SECONDS={result['seconds']:g}, CHAOS_SEED="
        f"{result['seed']}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, load average as it was written "
        f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())} (the run's own load "
        "included; anything else running then adds to it).\n\n"
        + table(result)
        + "\n\nFaults: "
        + "; ".join(result["faults"])
        + f".\nFinal states: {json.dumps(result.get('states', {}))}.\n"
        f"Duplicated effects by kind: {json.dumps(result.get('duplicated_by_kind'))}; "
        f"settled in {result['settled_in']} s.\n"
    )
    path.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("CHAOS_SECONDS", 300))
    )
    parser.add_argument(
        "--seed", type=int, default=int(os.environ.get("CHAOS_SEED", 20))
    )
    parser.add_argument(
        "--faults", type=int, default=int(os.environ.get("CHAOS_FAULTS", 10))
    )
    parser.add_argument(
        "--kinds", default=os.environ.get("CHAOS_KINDS", ",".join(KINDS))
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--write", action="store_true", help="bench/RESULTS.md CHAOS")
    args = parser.parse_args(argv)  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    result = run(args.seconds, args.seed, args.faults, args.kinds.split(","))
    print(table(result))
    if args.json:  # one line, last: tests/reliability/test_chaos.py reads it
        print(json.dumps(result))
    if args.write:
        write_results(result)
    bad = ("lost", "duplicated", "not_terminal", "ended_failed", "answers_5xx")
    return 1 if any(result[k] for k in bad) else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["prepare"]:
        print(json.dumps(_prepare_child()))
    else:
        sys.exit(main())
