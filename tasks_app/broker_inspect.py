"""Which task ids the broker still holds, for the health check's re-publishing.

Celery cannot answer "is this message still queued?", so we read the transport's
own storage: for Redis every priority list of every queue plus the hash of
messages reserved by workers (unacked, which also holds ETA messages), for the
filesystem broker the message files in the queue folder.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from django.conf import settings

from claw.celery import app

logger = logging.getLogger(__name__)

CHUNK = 500
UNACKED_KEY = "unacked"  # kombu.transport.redis.Channel.unacked_key


def _message_id(raw: bytes | str) -> str | None:
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if isinstance(message, list):  # unacked entries are [message, exchange, key]
        message = message[0] if message else {}
    headers = message.get("headers") or {}
    return headers.get("id") or (message.get("properties") or {}).get("correlation_id")


def redis_queue_keys(queues: Iterable[str]) -> list[str]:
    """Every Redis list of each queue: kombu splits a queue per priority step."""
    options = app.conf.broker_transport_options or {}
    sep = options.get("sep", "\x06\x16")
    steps = options.get("priority_steps", [0, 3, 6, 9])
    keys = []
    for queue in queues:
        for step in steps:
            keys.append(f"{queue}{sep}{step}" if step else queue)
    return keys


def _redis_ids(queues: Iterable[str]) -> set[str]:
    import redis

    client = redis.Redis.from_url(app.conf.broker_url, socket_timeout=5)
    ids: set[str] = set()
    for key in redis_queue_keys(queues):
        start = 0
        while True:
            # LRANGE in chunks: a long queue is never held in memory at once.
            chunk = client.lrange(key, start, start + CHUNK - 1)
            ids.update(filter(None, map(_message_id, chunk)))
            if len(chunk) < CHUNK:
                break
            start += CHUNK
    for _, raw in client.hscan_iter(UNACKED_KEY, count=CHUNK):
        message_id = _message_id(raw)
        if message_id:
            ids.add(message_id)
    return ids


def _filesystem_ids() -> set[str]:
    folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
    ids: set[str] = set()
    for path in folder.glob("*.msg"):
        try:
            message_id = _message_id(path.read_bytes())
        except OSError:  # consumed while we looked
            continue
        if message_id:
            ids.add(message_id)
    return ids


def queued_task_ids(
    queues: Iterable[str] | None = None, *, url: str | None = None
) -> set[str] | None:
    """Task ids the broker holds (queued or reserved); None if it cannot be read.

    None means "unknown": the caller must not treat every record as vanished.
    """
    queues = list(queues or settings.CLAW_QUEUES)
    url = url or app.conf.broker_url or ""
    try:
        if url.startswith(("redis", "rediss")):
            return _redis_ids(queues)
        if url.startswith("filesystem"):
            return _filesystem_ids()
    except Exception as exc:
        logger.warning("Could not read the broker's queues: %r", exc)
        return None
    logger.warning("No presence check for broker %s", url.split("://")[0])
    return None


def keep_copy_on_ack(message) -> None:
    """Make acknowledging message leave the broker's unacknowledged copy in place.

    For a refused duplicate delivery (a second copy of a running attempt): both
    deliveries carry the same delivery tag, so a plain ack would also delete the
    copy Redis keeps for the run it was refused for. Put back after the ack, with
    a fresh timestamp, that copy still comes back one visibility timeout later
    if the run's worker dies, and goes away when the run acknowledges it. The
    worker acknowledges later, from its event loop: the copy is read then.
    """
    ack = message.ack

    def ack_keeping_copy(multiple=False):
        put_back = _unacked_copy(message)
        ack(multiple=multiple)
        # tasks_app.broker_transport sends acks later: this one must reach Redis
        # before the copy is put back, or it would delete the copy after all
        send_acks = getattr(getattr(message.channel, "qos", None), "send_acks", None)
        if send_acks is not None:
            send_acks()
        put_back()

    message.ack = ack_keeping_copy


def _unacked_copy(message) -> Callable[[], None]:
    """Read Redis' unacked copy of message; return what writes it back (with a
    fresh timestamp). Other transports keep no such copy: nothing to do."""
    channel = getattr(message, "channel", None)
    qos = getattr(channel, "qos", None)
    key = getattr(qos, "unacked_key", None)
    index = getattr(qos, "unacked_index_key", None)
    tag = getattr(message, "delivery_tag", None)
    if not (key and index and tag):
        return lambda: None
    try:
        with channel.conn_or_acquire() as client:
            raw = client.hget(key, tag)
    except Exception as exc:
        logger.warning("Could not read the unacked copy of %s: %r", tag, exc)
        return lambda: None

    def put_back() -> None:
        if raw is None:
            return
        try:
            with channel.conn_or_acquire() as client:
                client.pipeline().hset(key, tag, raw).zadd(
                    index, {tag: time.time()}
                ).execute()
        except Exception as exc:
            logger.warning("Could not keep the unacked copy of %s: %r", tag, exc)

    return put_back
