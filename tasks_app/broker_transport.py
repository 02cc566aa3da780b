"""kombu's Redis transport, with one round trip per message (kombu 5.7.0).

kombu's Redis QoS keeps every delivered message in an "unacked" hash (and its
index, a sorted set) until the message is acknowledged, so that a worker killed
outright loses nothing: the unacked sweep puts old entries back in their queues.
Stock kombu makes three round trips per message, each waited for by the worker's
main process, which with tiny tasks is the serial part of a worker (bench/NOTES.md,
issue 21): BRPOP; a MULTI/EXEC writing the unacked entry; a MULTI/EXEC removing it
on the ack. And a worker killed between the first two, or while a popped message
waits unread in its socket (kombu holds a reply back while the prefetch window is
full), loses the message: it is in neither its queue nor the hash.

Here:
- Channel fetches with a Lua script (FETCH) that pops the message BRPOP would
  return and writes its unacked entry, so a message is always in one of the two
  places. Only when every queue is empty does it wait with kombu's BRPOP (whose
  delivery QoS.append writes as kombu does).
- An ack made on the event loop's thread is sent later: with FETCH's next call,
  with the next delivery's unacked write, or by the loop's timer after ACK_DELAY,
  and always before the channel closes. Nothing is lost by the delay: the task has
  finished (acks_late) and its final state is committed before the ack is made,
  so an ack that a kill -9 keeps from Redis only leaves the entry for the sweep,
  which redelivers the message after the visibility timeout, and the ledger
  refuses a redelivery of a finished attempt. Acks made on another thread (the
  threads pool calls back from its own) or on a connection without an event loop
  are sent at once, as kombu does.

Selected by CELERY_BROKER_TRANSPORT (claw.settings) for redis:// broker URLs; with
a global_keyprefix it fetches with BRPOP, as kombu does.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from queue import Empty
from time import monotonic

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import ResponseError

from tasks_app import kombu_fixes

logger = logging.getLogger(__name__)

# How long an ack may wait for a delivery to travel with. A busy worker fetches
# its next message within a few milliseconds of finishing one.
ACK_DELAY = 0.01

# KEYS: the unacked index, the unacked hash, then the queues' priority lists in
# BRPOP's order. ARGV: now, then the delivery tags to acknowledge. Pops the first
# message BRPOP would return and stores it in the unacked hash as kombu's
# QoS.append does ([payload, exchange, routing key], indexed by now), keeping the
# payload's own text. Returns {list, payload, 1}, {list, payload, 0} for a payload
# it cannot read (QoS.append writes it), or nil when every list is empty.
FETCH = """
for i = 2, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
for i = 3, #KEYS do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local ok, payload = pcall(cjson.decode, item)
    local props = ok and type(payload) == 'table' and payload.properties
    local info = type(props) == 'table' and props.delivery_info
    if type(info) == 'table' and type(props.delivery_tag) == 'string'
        and type(info.exchange) == 'string'
        and type(info.routing_key) == 'string' then
      local entry = '[' .. item .. ',' .. cjson.encode(info.exchange) .. ','
        .. cjson.encode(info.routing_key) .. ']'
      redis.call('ZADD', KEYS[1], ARGV[1], props.delivery_tag)
      redis.call('HSET', KEYS[2], props.delivery_tag, entry)
      return {KEYS[i], item, 1}
    end
    return {KEYS[i], item, 0}
  end
end
return false
"""


class QoS(kombu_redis.QoS):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._unsent_acks: list[str] = []
        # set by Channel while it delivers a message FETCH already wrote
        self.prewritten = False

    def ack(self, delivery_tag):
        transport = self.channel.connection  # always this module's Transport
        loop = transport.claw_loop
        if loop is None or threading.get_ident() != transport.claw_loop_thread:
            return super().ack(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # the prefetch window moves on now
        self._unsent_acks.append(delivery_tag)
        if len(self._unsent_acks) == 1:
            loop.call_later(ACK_DELAY, self.send_acks)

    def append(self, message, delivery_tag):
        if self.prewritten:
            self.prewritten = False
            return virtual.QoS.append(self, message, delivery_tag)
        # kombu's append (kombu 5.7.0), with the unsent acks in its MULTI/EXEC
        delivery = message.delivery_info
        entry = kombu_redis.dumps(
            [message._raw, delivery["exchange"], delivery["routing_key"]]
        )
        with self.pipe_or_acquire() as pipe:
            self._remove_unsent(pipe)
            pipe.zadd(self.unacked_index_key, {delivery_tag: kombu_redis.time()})
            pipe.hset(self.unacked_key, delivery_tag, entry)
            pipe.execute()
            virtual.QoS.append(self, message, delivery_tag)

    def send_acks(self) -> None:
        if not self._unsent_acks:
            return
        with self.pipe_or_acquire() as pipe:
            self._remove_unsent(pipe)
            pipe.execute()

    def restore_unacked_once(self, stderr=None):
        # A closing channel sends its acks first, or its messages would come back
        # only to be refused by the ledger.
        if self._unsent_acks:
            if kombu_fixes.connection_collected(self):
                # the sweep redelivers these after the visibility timeout
                logger.warning(
                    "Broker connection already closed: %d acknowledgement(s) not "
                    "sent; their messages come back after the visibility timeout "
                    "and the ledger refuses them",
                    len(self._unsent_acks),
                )
                self._unsent_acks.clear()
            else:
                try:
                    self.send_acks()
                except self.channel.connection_errors as exc:
                    logger.warning("Acknowledgements not sent at close: %r", exc)
        return super().restore_unacked_once(stderr)

    def take_unsent(self) -> list[str]:
        tags, self._unsent_acks = self._unsent_acks, []
        return tags

    def _remove_unsent(self, pipe) -> None:
        for tag in self.take_unsent():
            self._remove_from_indices(tag, pipe)


class Channel(kombu_redis.Channel):
    """Fetches with FETCH while its queues have messages, with BRPOP once empty.

    kombu pops a message with BRPOP and then, in a second round trip, writes it to
    the unacked hash: a worker killed between the two loses the message, and so
    does one killed while a popped message waits unread in its socket (kombu holds
    a reply back while the prefetch window is full). FETCH pops and writes in one
    script, so a message is always in its queue or in the unacked hash, and it
    carries the unsent acks: a busy worker makes one round trip per message.
    """

    QoS = QoS
    # the last FETCH found every queue empty: wait for the next message with BRPOP
    _claw_blocking = False
    # what the command in flight on the BRPOP connection is: FETCH or BRPOP
    _claw_fetching = False
    # False once the server refused the script
    _claw_scripts = True
    # conn_or_acquire's client
    _claw_client = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # consumers that never ack (celery inspect's replies): nothing may be
        # stored for them in the unacked hash, so their channel fetches with BRPOP
        self._claw_no_ack: set[str] = set()

    @contextmanager
    def conn_or_acquire(self, client=None):
        # kombu builds a new redis.Redis (and its table of response callbacks)
        # for every call without a client: each ack, delivery write and publish.
        # It holds no connection of its own, so one per pool does the same.
        if client:
            yield client
            return
        cached = self._claw_client
        if cached is None or cached.connection_pool is not self.pool:
            cached = self._claw_client = self._create_client()
        yield cached

    def basic_consume(self, queue, *args, **kwargs):
        no_ack = kwargs["no_ack"] if "no_ack" in kwargs else args[0]
        tag = kwargs["consumer_tag"] if "consumer_tag" in kwargs else args[2]
        if no_ack:
            self._claw_no_ack.add(tag)
        return super().basic_consume(queue, *args, **kwargs)

    def _basic_cancel(self, consumer_tag):
        self._claw_no_ack.discard(consumer_tag)
        return super()._basic_cancel(consumer_tag)

    def _brpop_start(self, timeout=None):
        self._claw_fetching = self._claw_scripts and not (
            self._claw_blocking or self.global_keyprefix or self._claw_no_ack
        )
        if not self._claw_fetching:
            return super()._brpop_start(timeout)
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [
            self._q_for_pri(queue, pri)
            for pri in self.priority_steps
            for queue in queues
        ]
        acks = self.qos.take_unsent()
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command(
            "EVAL",
            FETCH,
            2 + len(keys),
            self.unacked_index_key,
            self.unacked_key,
            *keys,
            kombu_redis.time(),
            *acks,
        )

    def _brpop_read(self, **options):
        if not self._claw_fetching:
            delivered = super()._brpop_read(**options)  # Empty when it timed out
            self._claw_blocking = False
            return delivered
        self._claw_fetching = False
        try:
            return self._fetch_read(**options)
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _fetch_read(self, **options) -> bool:
        connection = self.client.connection
        try:
            reply = self.client.parse_response(connection, "EVAL", **options)
        except self.connection_errors:
            connection.disconnect()  # the next turn reconnects, as kombu does
            raise
        except ResponseError as exc:
            # a server that refuses scripts (EVAL disabled or renamed): BRPOP
            # from now on rather than a consumer that fails on every fetch
            logger.error("Redis refused FETCH (%s); fetching with BRPOP", exc)
            self._claw_scripts = False
            raise Empty() from exc
        if not reply:
            self._claw_blocking = True
            raise Empty()
        dest, item, written = reply
        dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(dest)
        self.qos.prewritten = bool(written)
        try:
            self.connection._deliver(loads(bytes_to_str(item)), dest)
        finally:
            self.qos.prewritten = False
        return True


class Transport(kombu_redis.Transport):
    Channel = Channel
    claw_loop = None
    claw_loop_thread = None

    def register_with_event_loop(self, connection, loop):
        # Celery's consumer registers from the thread that then runs the loop.
        self.claw_loop = loop
        self.claw_loop_thread = threading.get_ident()
        return super().register_with_event_loop(connection, loop)
