"""Which task ids the broker still holds, for the health check's re-publishing.

Celery cannot answer "is this message still queued?", so we read the transport's
own storage: for Redis every priority list of every queue plus the hash of
messages reserved by workers (unacked, which also holds ETA messages), for the
filesystem broker the message files in the queue folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
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
