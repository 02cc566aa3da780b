"""Publishing many task messages without paying Celery's send_task for each.

send_task spends most of a message's publishing time deciding things that are
the same for every message of one shape (task name, queue, priority, compression,
with or without an ETA): the task's execution options, routing, the settings it
reads through Django's, the parent task, the exchange and retry policy. Measured
on 10,000 submit_many messages, it was two thirds of publishing them.

So publish_many lets send_task publish the first message of each shape, for real,
and records what it handed kombu's Producer.publish. Each further message of that
shape is the recorded one with what differs per message put in: its id (and root
id when it has no parent), arguments and their reprs, ETA and claw_record header.
It goes through Producer.publish with Celery's before/after_task_publish signals
around it, as send_task's own path sends them.

Celery features that make a message depend on more than its shape turn this off
(every message then goes through send_task): task-sent events, the deprecated
task_sent signal, and publishing from inside a running task (send_task adds each
message to that task's trail of children).
"""

from __future__ import annotations

from typing import Any

from celery import signals
from celery.utils.saferepr import saferepr

from claw.celery import app

# Producer.publish's own arguments in what Celery's send_task_message hands it; the
# rest are the message's properties (correlation_id, reply_to, priority, ...).
PUBLISH_ARGUMENTS = frozenset(
    [
        "exchange",
        "routing_key",
        "serializer",
        "compression",
        "retry",
        "retry_policy",
        "delivery_mode",
        "declare",
        "headers",
        "timeout",
        "confirm_timeout",
    ]
)


def replayable() -> bool:
    """Whether messages may be built from their shape's first one (see above)."""
    return not (
        app.conf.task_send_sent_event
        or signals.task_sent.receivers
        or app.current_worker_task is not None
    )


class _Recording:
    """The producer as send_task sees it: publishes, and keeps what it published."""

    def __init__(self, producer):
        self._producer = producer
        self.published: tuple[Any, dict] | None = None

    def __getattr__(self, name):
        return getattr(self._producer, name)

    def publish(self, body, **kwargs):
        self.published = (body, kwargs)
        return self._producer.publish(body, **kwargs)


class Shapes:
    """Publishes messages through one producer: each shape's first by send_task,
    the others built from it when replayable(), else every one by send_task."""

    def __init__(self, producer):
        self.producer = producer
        self.replay = replayable()
        self.first: dict[tuple, tuple[str, Any, dict]] = {}
        self.declared: set[str] = set()
        amqp = app.amqp
        self.repr_sizes = (amqp.argsrepr_maxsize, amqp.kwargsrepr_maxsize)
        self.repr_levels = app.conf.task_repr_maxlevels

    def send(self, name: str, message: dict, **options) -> None:
        """Publish one message: message is send_task's keyword arguments (args,
        kwargs, task_id, queue, priority, eta, headers, compression)."""
        queue = message["queue"]
        shape = (
            name,
            queue,
            message["priority"],
            message["compression"],
            message["eta"] is None,
        )
        recorded = self.first.get(shape)
        if recorded is not None:
            self._replay(name, message, *recorded)
            return
        recording = _Recording(self.producer)
        app.send_task(
            name,
            **message,
            # the first message to a queue declares it; kombu would check its
            # cache of declared queues again for every other one
            declare=None if queue not in self.declared else [],
            producer=recording,
            **options,
        )
        self.declared.add(queue)
        if self.replay and recording.published is not None:
            body, kwargs = recording.published
            self.first[shape] = (message["task_id"], body, kwargs)

    def _replay(self, name: str, message: dict, first_id: str, body, kwargs) -> None:
        task_id = message["task_id"]
        args, kw = message["args"] or (), message["kwargs"] or {}  # as_task_v2 does
        headers = {
            **kwargs["headers"],
            **message["headers"],
            "id": task_id,
            "eta": message["eta"] and message["eta"].isoformat(),
            "argsrepr": saferepr(args, self.repr_sizes[0], maxlevels=self.repr_levels),
            "kwargsrepr": saferepr(kw, self.repr_sizes[1], maxlevels=self.repr_levels),
        }
        if headers["root_id"] == first_id:  # no parent: a message is its own root
            headers["root_id"] = task_id
        body = (args, kw, body[2])
        # the first message declared the queue
        kwargs = {
            **kwargs,
            "headers": headers,
            "correlation_id": task_id,
            "declare": [],
        }
        properties = {k: v for k, v in kwargs.items() if k not in PUBLISH_ARGUMENTS}
        exchange, routing_key = kwargs["exchange"], kwargs["routing_key"]
        signals.before_task_publish.send(
            sender=name,
            body=body,
            exchange=exchange,
            routing_key=routing_key,
            declare=kwargs["declare"],
            headers=headers,
            properties=properties,
            retry_policy=kwargs["retry_policy"],
        )
        self.producer.publish(body, **kwargs)
        signals.after_task_publish.send(
            sender=name,
            body=body,
            headers=headers,
            exchange=exchange,
            routing_key=routing_key,
        )
