"""Live events: the platform half of the Server-Sent Events streams.

The database stays the source of truth; live delivery is a copy of it.

* Publishing (sync, any process). The ledger's writes (tasks_app.ledger_writes)
  ring a doorbell for every TaskEvent once it has committed; a domain publishes
  its own items (claw: each chunk of a reply as the provider streams it). On the
  services stack that is one Redis PUBLISH on one channel (plus, for an item
  with a `stream_key`, an XADD to a bounded Redis Stream that a reader replays
  from). Publishing never fails a write: with Redis down it is skipped for a few
  seconds and readers fall back to the database. On the embedded stack (no
  Redis) nothing is published; streams read the database every
  CLAW_LIVE_POLL_INTERVAL.
* Following (async, the ASGI process). One Hub per process holds one pub/sub
  connection and hands each item to the followers of its topics. A stream first
  registers its follower, then replays from the database, then follows: nothing
  published between the two is lost, and whatever was read twice is dropped by
  the stream's event ids. When the hub loses Redis every follower re-reads the
  database at the poll interval until it is back, then re-reads once more.
* Serving: sse_response() and run() turn a Source into an SSE body with a
  heartbeat comment every CLAW_LIVE_HEARTBEAT seconds.

tasks_app imports no domain: the task streams live here; claw and writing add
their own streams (a reply's text, a writing job) and register narrowing
parameters of the events stream (register_scope).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from tasks_app.models import TaskEvent, TaskRecord

logger = logging.getLogger(__name__)

# The old system's names for the lifecycle events (its Redis Streams consumers
# knew these), by TaskEvent.Kind.
TASK_EVENT_NAMES = {
    TaskEvent.Kind.QUEUED: "task_queued",
    TaskEvent.Kind.STARTED: "task_started",
    TaskEvent.Kind.PROGRESS: "task_progress",
    TaskEvent.Kind.RETRY: "task_retry",
    TaskEvent.Kind.SUCCEEDED: "task_completed",
    TaskEvent.Kind.FAILED: "task_failed",
    TaskEvent.Kind.CANCELLED: "task_cancelled",
    TaskEvent.Kind.LOST: "task_lost",
}
# The record's state once the event happened (Celery's names, as the API shows).
STATE_AFTER = {
    TaskEvent.Kind.QUEUED: TaskRecord.State.PENDING,
    TaskEvent.Kind.STARTED: TaskRecord.State.STARTED,
    TaskEvent.Kind.PROGRESS: TaskRecord.State.STARTED,
    TaskEvent.Kind.RETRY: TaskRecord.State.RETRY,
    TaskEvent.Kind.SUCCEEDED: TaskRecord.State.SUCCESS,
    TaskEvent.Kind.FAILED: TaskRecord.State.FAILURE,
    TaskEvent.Kind.CANCELLED: TaskRecord.State.REVOKED,
    TaskEvent.Kind.LOST: TaskRecord.State.LOST,
}
# A task stream ends once its record is here (LOST too: the health check
# re-queues a lost record as a new attempt, which a client follows anew).
ENDING_STATES = (*TaskRecord.FINAL_STATES, TaskRecord.State.LOST)
ENDING_KINDS = (
    TaskEvent.Kind.SUCCEEDED,
    TaskEvent.Kind.FAILED,
    TaskEvent.Kind.CANCELLED,
    TaskEvent.Kind.LOST,
)
BATCH = 500  # events read per query
PUBLISH_PAUSE = 5.0  # seconds publishing is skipped after Redis failed


def enabled() -> bool:
    """Whether live items go through Redis (the services stack)."""
    return bool(settings.CLAW_LIVE_REDIS_URL)


# --- publishing ------------------------------------------------------------------


@cache
def _client() -> redis.Redis:
    # Short timeouts: a worker's ledger write waits on this at most a moment.
    return redis.Redis.from_url(
        settings.CLAW_LIVE_REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5
    )


@cache
def channel() -> str:
    """Pub/sub channels are shared by every database of a Redis server: the
    database number keeps two deployments (or test runs) apart."""
    db = redis.connection.parse_url(settings.CLAW_LIVE_REDIS_URL).get("db", 0)
    return f"claw:live:{db}"


_paused_until = 0.0


def publish(item: dict, *, stream_key: str | None = None) -> None:
    """Publish item once the current transaction commits (at once outside one).

    With stream_key the item is also appended to that bounded Redis Stream
    (CLAW_LIVE_STREAM_MAXLEN entries, expiring CLAW_LIVE_STREAM_TTL seconds after
    the last), for readers that join late.
    """
    if not enabled():
        return
    if not transaction.get_connection().in_atomic_block:
        # Not transaction.on_commit: outside a transaction it asks the connection
        # for its autocommit state, which connects, and a reply streaming through
        # a database outage must keep publishing its chunks.
        _send(item, stream_key)
        return
    transaction.on_commit(lambda: _send(item, stream_key))


def _send(item: dict, stream_key: str | None) -> None:
    global _paused_until
    if time.monotonic() < _paused_until:
        return
    data = json.dumps(item, separators=(",", ":"))
    try:
        if not stream_key:
            _client().publish(channel(), data)
            return
        pipe = _client().pipeline(transaction=False)
        pipe.xadd(
            stream_key,
            {"d": data},
            maxlen=settings.CLAW_LIVE_STREAM_MAXLEN,
            approximate=True,
        )
        pipe.expire(stream_key, settings.CLAW_LIVE_STREAM_TTL)
        pipe.publish(channel(), data)
        pipe.execute()
    except redis.RedisError as exc:
        # Readers notice the lost connection and read the database meanwhile.
        _paused_until = time.monotonic() + PUBLISH_PAUSE
        logger.warning("Live publishing paused for %s s: %r", PUBLISH_PAUSE, exc)


def read_stream(stream_key: str) -> list[dict]:
    """Every item still held in a Redis Stream (empty without Redis)."""
    if not enabled():
        return []
    try:
        entries = _client().xrange(stream_key)
    except redis.RedisError:
        return []
    return [json.loads(fields[b"d"]) for _, fields in entries]


def delete_stream(stream_key: str) -> None:
    if enabled():
        with contextlib.suppress(redis.RedisError):
            _client().delete(stream_key)


def task_event_written(
    record_id: int, owner_id: int | None, root_id: int | None, parent_id: int | None
) -> None:
    """The doorbell of a committed TaskEvent (called by ledger_writes only)."""
    trees = sorted({t for t in (root_id, parent_id) if t is not None})
    publish({"k": "task", "r": record_id, "u": owner_id, "t": trees})


LISTENERS_TTL = 2.0  # seconds a process trusts its last count of subscribers
_listeners = (float("-inf"), False)


def listening() -> bool:
    """Whether any streams process is subscribed (PUBSUB NUMSUB, asked at most
    every LISTENERS_TTL seconds): with none, the ledger's doorbells are skipped,
    which saves a tiny task about 0.35 ms of worker CPU on a stack that serves no
    streams. Safe because a stream replays from the database when it opens and
    again when its process subscribes; a doorbell skipped in the seconds after a
    streams process starts is made up by its re-read after a quiet heartbeat."""
    global _listeners, _paused_until
    now = time.monotonic()
    if now - _listeners[0] < LISTENERS_TTL:
        return _listeners[1]
    if now < _paused_until:
        return False
    try:
        count = _client().pubsub_numsub(channel())[0][1]
    except redis.RedisError:
        _paused_until = now + PUBLISH_PAUSE
        count = 0
    _listeners = (now, count > 0)
    return count > 0


def topics_of(item: dict) -> list[tuple]:
    """The hub topics an item is for. Tasks: the record, its root (a job's
    members), its owner and staff; a domain item names its own ("to")."""
    if item.get("k") == "task":
        found = [("task", item["r"]), ("all",)]
        found += [("root", tree) for tree in item.get("t", ())]
    else:
        found = [tuple(t) for t in item.get("to", ())] + [("all",)]
    if item.get("u") is not None:
        found.append(("user", item["u"]))
    return found


# --- following -------------------------------------------------------------------


class Follower:
    """One stream's inbox: items for its topics, and whether to re-read the
    database (Redis came back, or items were dropped)."""

    MAX_ITEMS = 10_000

    def __init__(self, topics: Iterable[tuple]):
        self.topics = list(topics)
        self.items: list[dict] = []
        self.resync = False
        self.event = asyncio.Event()

    def put(self, item: dict | None) -> None:
        if item is None or len(self.items) >= self.MAX_ITEMS:
            self.resync = True  # too far behind: the database has it all
            self.items.clear()
        else:
            self.items.append(item)
        self.event.set()

    async def get(self, timeout: float) -> tuple[list[dict], bool]:
        if not self.items and not self.resync:
            self.event.clear()
            # asyncio.timeout, not wait_for: no task created per wait
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.event.wait()
        items, self.items = self.items, []
        resync, self.resync = self.resync, False
        return items, resync


class Hub:
    """The process's one Redis subscription, fanned out to its followers."""

    def __init__(self):
        self.followers: dict[tuple, set[Follower]] = {}
        self.live = False  # subscribed: items arrive without reading the database
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        """Subscribe (once, in the background). The ASGI app calls it at start-up,
        so workers see a listener (listening()) before the first stream opens."""
        if enabled() and (self.task is None or self.task.done()):
            self.task = asyncio.get_running_loop().create_task(self._run())

    def follow(self, topics: Iterable[tuple]) -> Follower:
        follower = Follower(topics)
        for topic in follower.topics:
            self.followers.setdefault(topic, set()).add(follower)
        self.start()
        return follower

    def unfollow(self, follower: Follower) -> None:
        for topic in follower.topics:
            members = self.followers.get(topic)
            if members is not None:
                members.discard(follower)
                if not members:
                    del self.followers[topic]

    def dispatch(self, item: dict) -> None:
        delivered = set()
        for topic in topics_of(item):
            for follower in self.followers.get(topic, ()):
                if follower not in delivered:
                    delivered.add(follower)
                    follower.put(item)

    def _resync_all(self) -> None:
        for members in list(self.followers.values()):
            for follower in members:
                follower.put(None)

    async def _run(self) -> None:
        from redis import asyncio as aioredis

        while True:
            client = aioredis.Redis.from_url(
                settings.CLAW_LIVE_REDIS_URL,
                socket_connect_timeout=1,
                client_name=f"claw-live-hub-{os.getpid()}",  # in CLIENT LIST
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel())
                self.live = True
                self._resync_all()  # anything published before this was missed
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        await pubsub.ping()  # notices a Redis that went away quietly
                    elif message.get("type") == "message":
                        self.dispatch(json.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # RedisError, OSError, bad data
                if self.live:
                    logger.warning("Live events: lost Redis (%r); reading the db", exc)
                self.live = False
                self._resync_all()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await client.aclose()
            await asyncio.sleep(0.5)


_hubs: dict[int, Hub] = {}


def hub() -> Hub:
    """The hub of the running event loop (one per server process)."""
    loop = asyncio.get_running_loop()
    found = _hubs.get(id(loop))
    if found is None:
        found = _hubs[id(loop)] = Hub()
    return found


# --- serving -----------------------------------------------------------------------


def sse(event: str, data: Any, event_id: str | int | None = None) -> str:
    """One event in text/event-stream framing (data is JSON on one line)."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return "\n".join(lines) + "\n\n"


class Source:
    """What a stream reads. catch_up() (async) reads the durable store and returns
    the events not sent yet; take() turns a live item into events, or returns
    None when only the store can say (a doorbell, a gap). finished ends it."""

    topics = ()  # the hub topics whose items it takes
    finished = False

    async def catch_up(self) -> list[str]:
        raise NotImplementedError

    def take(self, item: dict) -> list[str] | None:
        return None


async def run(source: Source) -> AsyncIterator[str]:
    """The SSE body of a source: replay, then follow until it finishes."""
    the_hub = hub()
    follower = the_hub.follow(source.topics)  # before the replay: no gap
    heartbeat = settings.CLAW_LIVE_HEARTBEAT
    try:
        # A comment first: the response (and its headers) leaves at once.
        yield f"retry: {settings.CLAW_LIVE_RETRY_MS}\n: stream\n\n"
        first = await source.catch_up()
        if first:
            yield "".join(first)
        quiet_since = read_at = time.monotonic()
        while not source.finished:
            live = the_hub.live
            items, resync = await follower.get(
                heartbeat if live else settings.CLAW_LIVE_POLL_INTERVAL
            )
            out: list[str] = []
            # Without Redis: read the database each poll interval. With it, also
            # once a heartbeat interval has passed without a read, in case a
            # publish was lost (a worker that could not reach Redis for a
            # moment): a stream never waits for ever on a doorbell that did not
            # ring.
            need = resync or not live or time.monotonic() - read_at >= heartbeat
            for item in items:
                events = source.take(item)
                if events is None:
                    need = True
                else:
                    out += events
            if need:
                out += await source.catch_up()
                read_at = time.monotonic()
            now = time.monotonic()
            if out:
                yield "".join(out)
                quiet_since = now
            elif now - quiet_since >= heartbeat:
                yield ": keep-alive\n\n"
                quiet_since = now
    finally:
        the_hub.unfollow(follower)


def sse_response(source: Source) -> StreamingHttpResponse:
    response = StreamingHttpResponse(run(source), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


def in_thread(fn: Callable, *args, **kwargs):
    """Run a database function off the event loop (not thread-sensitive: streams
    must not queue behind each other), closing a connection it broke or aged."""

    def call():
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=False)()


def last_event_id(request: HttpRequest) -> str:
    """Where a client resumes: the Last-Event-ID header (what EventSource sends
    on reconnecting), else ?after=."""
    return (
        request.headers.get("Last-Event-ID") or request.GET.get("after") or ""
    ).strip()


def drf_object(request: HttpRequest, view_class, **kwargs):
    """Authenticate, throttle and look an object up exactly as the REST view of
    the same path does (its authentication, permissions and owner scoping), so a
    stream of someone else's object is the same 404 before any event.

    Returns (object, None) or (None, the error response). Sync: run in_thread.
    """
    view = view_class(
        action_map={"get": "retrieve"}, args=(), kwargs=kwargs, format_kwarg=None
    )
    view.headers = {}
    drf_request = view.initialize_request(request, **kwargs)
    view.request = drf_request
    try:
        _check(view, drf_request)
        return view.get_object(), None
    except Exception as exc:
        response = view.finalize_response(
            drf_request, view.handle_exception(exc), **kwargs
        )
        response.render()
        return None, response


def _check(view, request) -> None:
    """APIView.initial() without its content negotiation: an EventSource asks
    for text/event-stream, which no DRF renderer offers (errors are JSON)."""
    view.perform_authentication(request)
    view.check_permissions(request)
    view.check_throttles(request)


def drf_user(request: HttpRequest, view_class):
    """The authenticated user as view_class would see it, or the error response."""
    view = view_class(action_map={"get": "list"}, args=(), kwargs={}, format_kwarg=None)
    view.headers = {}
    drf_request = view.initialize_request(request)
    view.request = drf_request
    try:
        _check(view, drf_request)
        return drf_request.user, None
    except Exception as exc:
        response = view.finalize_response(drf_request, view.handle_exception(exc))
        response.render()
        return None, response


async def open_for_events(request: HttpRequest, view_class, **kwargs):
    """The object a task-event stream follows and the event id to resume after,
    as (object, after, None), or (None, None, the error response): a 404 or 401
    as the REST view would answer, a 400 naming `after` if it is malformed."""
    obj, error = await in_thread(drf_object, request, view_class, **kwargs)
    if error is not None:
        return None, None, error
    try:
        after = parse_event_id(last_event_id(request))
    except ValueError as exc:
        return None, None, json_error(400, "after", str(exc))
    return obj, after, None


def json_error(status: int, field: str, message: str) -> HttpResponse:
    return HttpResponse(
        json.dumps({field: [message]}), status=status, content_type="application/json"
    )


# --- task events -------------------------------------------------------------------


def parse_event_id(value: str) -> int | None:
    """A TaskEvent id to resume after; None if absent, ValueError if malformed."""
    if not value:
        return None
    if not value.isascii() or not value.isdigit():
        raise ValueError("Must be the id of an event this stream sent.")
    return int(value)


def task_event_data(event: TaskEvent, record: TaskRecord, result: Any) -> dict:
    """What a task event carries: the old system's fields and the ledger's."""
    data = dict(event.data or {})
    body = {
        "event_id": event.id,
        "task_id": record.id,
        "celery_id": event.celery_id,
        "name": record.name,
        "kind": event.kind,
        "state": STATE_AFTER.get(event.kind, record.state),
        "attempt": event.attempt,
        "worker": event.worker,
        "at": event.at.isoformat(),
        "root_id": record.root_id,
        "parent_id": record.parent_id,
    }
    if event.kind == TaskEvent.Kind.PROGRESS:
        body["progress"] = {
            "current": data.get("current", 0),
            "total": data.get("total", 0),
            "message": data.get("message", ""),
        }
    if event.kind in ENDING_KINDS or event.kind == TaskEvent.Kind.RETRY:
        body["error"] = data.get("error") or data.get("reason") or record.error or ""
    if event.kind == TaskEvent.Kind.SUCCEEDED:
        body["error"] = ""
        body["result"] = result
    if event.kind in ENDING_KINDS and record.started_at:
        body["duration"] = round((event.at - record.started_at).total_seconds(), 3)
    body["data"] = data
    return body


def _results(celery_ids: list[str]) -> dict[str, Any]:
    from django_celery_results.models import TaskResult

    found = {}
    for task_id, raw in TaskResult.objects.filter(task_id__in=celery_ids).values_list(
        "task_id", "result"
    ):
        try:
            found[task_id] = json.loads(raw) if raw else None
        except (TypeError, ValueError):
            found[task_id] = raw
    return found


@dataclass
class TaskSource(Source):
    """The TaskEvent timeline of the records matching `records` (a Q on
    TaskRecord), each event named as the old system named it, its id the
    TaskEvent id. Ends once `ending` (a record id) is in an ending state, or,
    with no ending record, never (the events stream)."""

    records: Q
    topics: list[tuple]
    after: int | None = None
    ending: int | None = None
    extra: dict = field(default_factory=dict)
    finished: bool = False
    # PostgreSQL hands ids out at INSERT, not at COMMIT: an event may become
    # visible after one with a higher id was sent. So each read starts not after
    # the highest id sent but after the highest id sent LOOKBACK seconds ago
    # (marks: (time, highest id) at each read), and skips what it sent since
    # (`sent`): a late event is sent once, LOOKBACK seconds being far longer than
    # a ledger write's transaction.
    marks: deque = field(default_factory=deque)
    sent: set = field(default_factory=set)
    LOOKBACK = 10.0

    async def catch_up(self) -> list[str]:
        return await in_thread(self._catch_up)

    def take(self, item: dict) -> list[str] | None:
        return None  # a doorbell: the rows are in the database

    def _catch_up(self) -> list[str]:
        out = []
        ended = None
        if self.ending is not None:
            # read before the events: an ending state seen here has its event below
            ended = (
                TaskRecord.objects.filter(pk=self.ending, state__in=ENDING_STATES)
                .values_list("pk", flat=True)
                .first()
            )
        while True:
            events = self._fetch()
            out += events
            if len(events) < BATCH:
                break
        if ended is not None:
            self.finished = True
        return out

    def _floor(self, now: float) -> int | None:
        if not self.marks or self.marks[-1][1] != self.after:
            self.marks.append((now, self.after))
        while len(self.marks) > 1 and now - self.marks[1][0] >= self.LOOKBACK:
            self.marks.popleft()
        floor = self.marks[0][1]
        if floor is not None:
            self.sent = {i for i in self.sent if i > floor}
        return floor

    def _fetch(self) -> list[str]:
        floor = self._floor(time.monotonic())
        rows = TaskEvent.objects.filter(
            record__in=TaskRecord.objects.filter(self.records)
        )
        if floor is not None:
            rows = rows.filter(id__gt=floor)
        if self.sent:
            rows = rows.exclude(id__in=list(self.sent))
        rows = list(rows.select_related("record").order_by("id")[:BATCH])
        results = _results(
            [e.celery_id for e in rows if e.kind == TaskEvent.Kind.SUCCEEDED]
        )
        out = []
        for event in rows:
            data = task_event_data(event, event.record, results.get(event.celery_id))
            data.update(self.extra)
            # An event committed after a later one is sent without an id, so the
            # client's Last-Event-ID stays the highest it has: resuming repeats
            # nothing.
            late = self.after is not None and event.id < self.after
            name = TASK_EVENT_NAMES.get(event.kind, event.kind)
            out.append(sse(name, data, None if late else event.id))
            self.sent.add(event.id)
            self.after = max(self.after or 0, event.id)
        return out


def over(source: TaskSource) -> bool:
    """A client resuming after the last event of a record that has ended: it gets
    204 (which stops an EventSource) rather than an empty stream that would make
    it reconnect for ever. Sync: run in_thread."""
    if source.after is None or source.ending is None:
        return False
    ended = TaskRecord.objects.filter(pk=source.ending, state__in=ENDING_STATES)
    records = TaskRecord.objects.filter(source.records)
    later = TaskEvent.objects.filter(record__in=records, id__gt=source.after)
    return ended.exists() and not later.exists()


async def task_response(source: TaskSource) -> HttpResponse:
    if await in_thread(over, source):
        return ended_response()
    return sse_response(source)


def task_source(record: TaskRecord, after: int | None, **extra) -> TaskSource:
    return TaskSource(
        records=Q(pk=record.pk),
        topics=[("task", record.pk)],
        after=after,
        ending=record.pk,
        extra=extra,
    )


def tree_source(root: TaskRecord, after: int | None, **extra) -> TaskSource:
    """A record and every record under it (a job's sections, a chord's members);
    ends with the root."""
    return TaskSource(
        records=Q(pk=root.pk) | Q(root_id=root.pk) | Q(parent_id=root.pk),
        topics=[("task", root.pk), ("root", root.pk)],
        after=after,
        ending=root.pk,
        extra=extra,
    )


# --- the events stream's narrowing parameters ------------------------------------


@dataclass
class Scope:
    """What ?<param>= narrows the events stream to: the records whose events it
    carries, and a test of the domain items it lets through."""

    records: Q
    items: Callable[[dict], bool]


_scopes: dict[str, Callable[[Any, str], Scope]] = {}
_item_sources: list[Callable[[dict], list[str] | None]] = []


def register_scope(param: str, resolve: Callable[[Any, str], Scope]) -> None:
    """A domain's ?param= for the events stream: resolve(user, value) returns the
    Scope, or raises Http404 (not the user's) / ValueError (malformed)."""
    _scopes[param] = resolve


def register_item_events(render: Callable[[dict], list[str] | None]) -> None:
    """A domain's renderer of its live items for the events stream: events for an
    item it knows, None for any other."""
    _item_sources.append(render)


def scope_params() -> list[str]:
    return sorted(_scopes)


def resolve_scope(user, param: str, value: str) -> Scope:
    return _scopes[param](user, value)


class EventsSource(TaskSource):
    """Everything happening to the caller's objects (staff: to everyone's): task
    events from the database (resumable by their ids) and domain items live."""

    def __init__(self, user, scope: Scope | None, after: int | None):
        everyone = user.is_staff and scope is None
        records = Q() if everyone else Q(owner_id=user.pk)
        if scope is not None:
            records = scope.records if user.is_staff else records & scope.records
        super().__init__(
            records=records,
            topics=[("all",)] if user.is_staff else [("user", user.pk)],
            after=after,
        )
        self.scope = scope
        if self.after is None:
            # The events stream follows from now: its replay is what a client
            # asks for with Last-Event-ID, not every event ever written.
            last = (
                TaskEvent.objects.order_by("-id").values_list("id", flat=True).first()
            )
            self.after = last or 0

    def take(self, item: dict) -> list[str] | None:
        if item.get("k") == "task":
            return None
        if self.scope is not None and not self.scope.items(item):
            return []
        for render in _item_sources:
            events = render(item)
            if events is not None:
                return events
        return []


# --- the OpenAPI schema ---------------------------------------------------------------

_documented: dict[str, dict] = {}


def document(path: str, *, summary: str, tag: str, parameters: list[dict]) -> None:
    """Describe a stream in the OpenAPI schema (the streams are async views, which
    drf-spectacular does not see); add_to_schema() puts them in."""
    _documented[path] = {
        "get": {
            "operationId": path.strip("/")
            .replace("/", "_")
            .replace("{", "")
            .replace("}", ""),
            "summary": summary,
            "description": STREAM_DESCRIPTION,
            "tags": [tag],
            "parameters": [
                *parameters,
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Resume after this event id (EventSource sends it).",
                },
                {
                    "name": "after",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Resume after this event id (as Last-Event-ID).",
                },
            ],
            "security": [{"tokenAuth": []}, {"cookieAuth": []}],
            "responses": {
                "200": {
                    "description": "A Server-Sent Events stream.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "204": {"description": "Nothing left to send (resumed after the end)."},
            },
        }
    }


STREAM_DESCRIPTION = (
    "Server-Sent Events (text/event-stream): each event has an `id:`; reconnect "
    "with Last-Event-ID (or ?after=) to get exactly the rest. A `: keep-alive` "
    "comment at least every 15 s. Same authentication and scoping as the REST "
    "endpoints: someone else's object is a 404 before any event."
)


def add_to_schema(result, generator, request, public):
    paths = result.setdefault("paths", {})
    for path, item in _documented.items():
        paths.setdefault(path, item)
    return result


def ended_response() -> HttpResponse:
    """204: tells an EventSource that reconnects after the end to stop."""
    return HttpResponse(status=204)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
