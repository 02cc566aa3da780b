"""A workaround for kombu's Redis transport (kombu 5.7.0).

After a broker connection loss Celery's consumer collects the old connection,
which sets the transport's `client` to None (Connection._do_close_transport).
A channel of that connection closed afterwards still restores its
unacknowledged messages (QoS.restore_unacked_once), and kombu's Redis QoS then
builds a new client from `transport.client.hostname`: AttributeError
'NoneType' object has no attribute 'hostname'. That is not a connection error,
so the worker's consumer reported "Unrecoverable error" and the worker exited
(seen on a Redis restart while a worker held unacknowledged messages). The
same path has failed before: kombu#970 (warm shutdown), kombu#582 (gossip).

Installed from TasksAppConfig.ready() in every process: with the transport gone
the restore is skipped; the messages stay in Redis' unacked hash, where the
unacked sweep (restore_visible) puts them back in their queues after the
visibility timeout, as it does for a worker killed outright.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def connection_collected(qos) -> bool:
    """Whether Celery has collected the connection of qos's channel (its
    transport's client is None): nothing can be sent through it any more."""
    return getattr(qos.channel.connection, "client", 1) is None


def install() -> None:
    try:
        from kombu.transport import redis as kombu_redis
    except ImportError:  # pragma: no cover - redis is a requirement
        return
    qos = kombu_redis.QoS
    if getattr(qos.restore_unacked, "claw_fixed", False):
        return
    original = qos.restore_unacked

    def restore_unacked(self, client=None):
        if client is None and connection_collected(self):
            logger.warning(
                "Broker connection already closed: %d unacknowledged message(s) "
                "stay in Redis' unacked hash; the unacked sweep restores them "
                "after the visibility timeout",
                len(self._delivered),
            )
            self._delivered.clear()
            return
        return original(self, client)

    restore_unacked.claw_fixed = True
    qos.restore_unacked = restore_unacked
