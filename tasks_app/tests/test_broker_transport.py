"""tasks_app.broker_transport against a real Redis: an ack made on the event
loop's thread leaves Redis' unacked hash with the next delivery's write, or by
the loop's timer, or when the channel closes; an ack from any other thread, or
on a connection without a loop, leaves it at once, as in kombu."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from django.conf import settings
from kombu import Connection, Consumer
from kombu.asynchronous import Hub

from tasks_app import broker_transport
from tasks_app.broker_inspect import UNACKED_KEY
from tests.harness import wait_for
from tests.tasks import redis_client


@pytest.fixture
def queue():
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    assert settings.CELERY_BROKER_TRANSPORT == "tasks_app.broker_transport:Transport"
    name = f"claw-acks-{uuid.uuid4().hex[:8]}"
    conn = Connection(
        settings.CELERY_BROKER_URL,
        transport=settings.CELERY_BROKER_TRANSPORT,
        transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    )
    simple = conn.SimpleQueue(name)
    yield simple
    client = redis_client()
    client.delete(name, *(f"{name}:{n}" for n in range(10)))
    simple.close()
    conn.release()


def on_loop(queue) -> Hub:
    hub = Hub()
    queue.channel.connection.register_with_event_loop(queue.channel.connection, hub)
    return hub


def delivered(queue):
    queue.put({"n": 1})
    return queue.get(timeout=5)


def unacked(queue, message) -> bool:
    return bool(redis_client().hexists(queue.channel.unacked_key, message.delivery_tag))


def test_the_transport_is_the_brokers(queue):
    assert isinstance(queue.channel.connection, broker_transport.Transport)
    assert isinstance(queue.channel.qos, broker_transport.QoS)


def test_an_ack_on_the_loop_travels_with_the_next_delivery(queue):
    on_loop(queue)
    first = delivered(queue)
    assert unacked(queue, first)

    first.ack()
    assert unacked(queue, first)  # not sent yet
    assert first.delivery_tag in queue.channel.qos._dirty  # the prefetch window moved

    second = delivered(queue)
    assert not unacked(queue, first)  # sent in the second's MULTI/EXEC
    assert unacked(queue, second)
    entry = redis_client().zscore(queue.channel.unacked_index_key, second.delivery_tag)
    assert entry is not None and abs(entry - time.time()) < 60


def test_an_ack_with_no_delivery_after_it_is_sent_by_the_loops_timer(queue):
    hub = on_loop(queue)
    message = delivered(queue)
    message.ack()
    assert unacked(queue, message)

    time.sleep(broker_transport.ACK_DELAY * 2)
    hub.fire_timers(propagate=(Exception,))

    assert not unacked(queue, message)


def test_a_closing_channel_sends_its_acks_first(queue):
    on_loop(queue)
    message = delivered(queue)
    message.ack()
    assert unacked(queue, message)

    queue.channel.close()

    assert not unacked(queue, message)
    assert redis_client().llen(queue.queue.name) == 0  # nothing restored


def test_an_ack_from_another_thread_is_sent_at_once(queue):
    on_loop(queue)
    message = delivered(queue)

    acker = threading.Thread(target=message.ack)
    acker.start()
    acker.join()

    assert not unacked(queue, message)


def test_an_ack_on_a_connection_without_a_loop_is_sent_at_once(queue):
    message = delivered(queue)
    message.ack()
    assert not unacked(queue, message)


def test_the_workers_acks_reach_redis(transactional_db, celery_worker):
    from tasks_app import services
    from tests.harness import wait_final

    records = [services.submit("tests.add", args=[n, 1]) for n in range(5)]
    ids = {wait_final(record).celery_id for record in records}

    def ours_left() -> set[str]:
        raw = redis_client().hvals(UNACKED_KEY)
        return {i for i in ids if any(i.encode() in entry for entry in raw)}

    # each ack leaves within ACK_DELAY of its task's end, with no delivery after
    wait_for(lambda: not ours_left(), timeout=5, message="the worker's acks")


def test_a_fetched_message_is_in_the_unacked_hash_before_it_is_read(queue):
    # kombu's BRPOP pops first and writes the unacked entry in a second round
    # trip: a worker killed in between, or while the reply waits unread in its
    # socket, loses the message. FETCH pops and writes in one script.
    queue.put({"n": 1})
    channel = queue.consumer.channel
    queue.consumer.consume()
    channel.connection.cycle.on_poll_start()  # FETCH sent, its reply not read
    client = redis_client()
    wait_for(lambda: client.llen(queue.queue.name) == 0, timeout=5, message="the pop")

    entries = [json.loads(entry) for entry in client.hvals(channel.unacked_key)]
    assert [e for e in entries if e[2] == queue.queue.name]  # popped and stored

    message = queue.get(timeout=5)  # reads the reply in flight
    assert message.payload == {"n": 1}
    assert unacked(queue, message)


def test_the_unacked_entry_is_the_one_kombu_writes_and_restores(queue):
    message = delivered(queue)
    raw = redis_client().hget(queue.channel.unacked_key, message.delivery_tag)
    payload, exchange, routing_key = json.loads(raw)
    assert payload == message._raw
    assert [exchange, routing_key] == [
        message.delivery_info["exchange"],
        message.delivery_info["routing_key"],
    ]

    queue.channel.qos.restore_by_tag(message.delivery_tag)

    assert not unacked(queue, message)
    again = queue.get(timeout=5)
    assert again.delivery_tag == message.delivery_tag
    assert again.payload == {"n": 1}


def test_fetch_takes_messages_in_kombus_priority_order(queue):
    stock = Connection(
        settings.CELERY_BROKER_URL,
        transport="redis",
        transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    )
    orders = []
    for simple in (queue, stock.SimpleQueue(queue.queue.name)):
        for priority in (0, 9, 5):
            simple.put({"priority": priority}, priority=priority)
        got = [simple.get(timeout=5) for _ in range(3)]
        orders.append([message.payload["priority"] for message in got])
        for message in got:
            message.ack()
    stock.release()

    assert orders == [[0, 5, 9], [0, 5, 9]]  # BRPOP's: the lowest number first


def test_an_empty_queue_is_waited_on_with_brpop_then_fetched_from_again(queue):
    channel = queue.consumer.channel
    with pytest.raises(queue.Empty):
        queue.get(timeout=0.5)
    assert channel._claw_blocking

    message = delivered(queue)  # BRPOP's reply, then kombu's own unacked write

    assert unacked(queue, message)
    assert not channel._claw_blocking


def test_a_payload_fetch_cannot_read_is_stored_by_kombus_append(queue):
    queue.put({"n": 1})
    client = redis_client()
    raw = json.loads(client.rpop(queue.queue.name))
    raw["properties"]["delivery_info"]["exchange"] = None
    client.lpush(queue.queue.name, json.dumps(raw))

    message = queue.get(timeout=5)

    assert message.payload == {"n": 1}
    entry = json.loads(client.hget(queue.channel.unacked_key, message.delivery_tag))
    assert entry[1:] == [None, queue.queue.name]


def test_a_consumer_that_never_acks_leaves_nothing_in_the_unacked_hash(queue):
    # celery inspect / ping read their replies with no_ack: an entry stored for
    # them would be put back in the reply queue by the sweep, hours later
    channel = queue.channel
    queue.put({"n": 1})
    got = []
    consumer = Consumer(
        channel,
        [queue.queue],
        no_ack=True,
        callbacks=[lambda body, m: got.append(body)],
    )
    with consumer:
        queue.channel.connection.client.drain_events(timeout=5)
    assert got and got[0] == {"n": 1}
    entries = [json.loads(e) for e in redis_client().hvals(channel.unacked_key)]
    assert not [e for e in entries if e[2] == queue.queue.name]


def test_a_server_that_refuses_the_script_is_read_with_brpop(queue, monkeypatch):
    channel = queue.consumer.channel
    monkeypatch.setattr(broker_transport, "FETCH", "return redis.call('NOSUCH')")
    queue.put({"n": 1})

    # the refused script is logged, and the same get goes on with BRPOP (and
    # kombu's own unacked write)
    message = queue.get(timeout=5)

    assert not channel._claw_scripts
    assert message.payload == {"n": 1}
    assert unacked(queue, message)


def test_calls_without_a_client_share_one_per_pool(queue):
    """kombu's calls without a client (acks, unacked writes, publishes) get the
    channel's one client, not a new redis.Redis each; a new pool (after a fork
    or a reconnect) gets a new one."""
    channel = queue.channel
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
        assert first.connection_pool is channel.pool
    given = redis_client()
    with channel.conn_or_acquire(given) as client:
        assert client is given

    channel._disconnect_pools()  # what kombu does after a fork
    with channel.conn_or_acquire() as third:
        assert third is not first
        assert third.connection_pool is channel.pool
    delivered(queue).ack()  # the channel still works on its new pool
