"""tasks_app.kombu_fixes against a real Redis: a channel that outlives its
collected connection (as after a broker connection loss) restores its
unacknowledged messages without an AttributeError, and they stay in Redis'
unacked hash for the unacked sweep."""

from __future__ import annotations

import uuid

from django.conf import settings
from kombu import Connection

from tests.tasks import redis_client


def test_restoring_after_the_connection_was_collected_keeps_the_worker_alive():
    name = f"claw-kombu-fix-{uuid.uuid4().hex[:8]}"
    conn = Connection(
        settings.CELERY_BROKER_URL,
        transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    )
    queue = conn.SimpleQueue(name)
    try:
        queue.put({"n": 1})
        message = queue.get(timeout=5)  # delivered, not acknowledged
        channel = queue.channel
        unacked_key = channel.unacked_key
        tag = message.delivery_tag
        assert redis_client().hexists(unacked_key, tag)
        # What Celery's consumer does on a connection loss (collect) before a
        # channel of the old connection is closed:
        conn._do_close_transport()

        # kombu 5.7.0: AttributeError 'NoneType' object has no attribute
        # 'hostname' (restore_unacked_once), the worker's "Unrecoverable error"
        channel.close()

        assert not channel.qos._delivered
        # still in the unacked hash: the sweep puts it back after the timeout
        assert redis_client().hexists(unacked_key, tag)
    finally:
        client = redis_client()
        client.hdel(channel.unacked_key, tag)
        client.zrem(channel.unacked_index_key, tag)
        client.delete(name, *(f"{name}:{n}" for n in range(10)))
