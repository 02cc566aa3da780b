"""Celery signal receivers. Each one hands off to tasks_app.services (or to workers
and connections, for worker settings) and holds no logic of its own.

Receivers run in the publishing process (before_task_publish) or the worker. Celery
logs an exception raised by a receiver instead of failing the task, so a broken
receiver shows up as a stale record (which check_task_health catches).
"""

from __future__ import annotations

import time

from celery import signals, states
from django.utils import timezone

from tasks_app import connections, leases, services, starts, workers

# Trace states after which the record has left STARTED (or will, for RETRY), so
# the run's lease needs no release.
RUN_ENDED_RECORD = (states.SUCCESS, states.FAILURE, states.RETRY)


@signals.worker_init.connect
def on_worker_init(sender, **_):
    # After -Q is applied and before the consumer reads the multiplier.
    sender.prefetch_multiplier = workers.prefetch_multiplier_for(
        set(sender.app.amqp.queues.consume_from or ()), sender.prefetch_multiplier
    )


@signals.before_task_publish.connect
def on_before_task_publish(body, routing_key=None, headers=None, properties=None, **_):
    # Also where a Celery retry is recorded (STARTED -> RETRY), before the retry
    # message exists; a task_retry receiver would run too late (see
    # services._record_retry_publish).
    services.record_published(headers or {}, body, routing_key, properties or {})


@signals.task_prerun.connect
def on_task_prerun(task_id, task, **_):
    # The refusal is read by LedgerTask.before_start, which can stop the run.
    request = task.request
    hostname = request.hostname or ""
    runner = leases.new_runner(hostname)
    request.claw_refusal = None
    request.claw_runner = runner
    received = getattr(request, starts.RECEIVED_HEADER, None)
    if starts.deferrable(received) and services.may_start_later(
        task_id, name=task.name
    ):
        # STARTED is written by the final SUCCESS, or once the run is long.
        now = timezone.now()
        start = starts.Start(task.name, hostname, runner, now, time.monotonic())
        starts.begin(task_id, start, write_late_start)
        return
    request.claw_refusal = services.mark_started(
        task_id,
        name=task.name,
        worker=hostname,
        runner=runner,
        record_id=getattr(request, "claw_record", None),
    )
    if request.claw_refusal is None:
        leases.hold(task_id, runner)
    else:
        request.claw_runner = None


def write_late_start(celery_id: str, start: starts.Start) -> None:
    # A run's start written late (tasks_app.starts), with the lease it then holds.
    if services.mark_started_late(celery_id, start):
        leases.hold(celery_id, start.runner)


@signals.task_success.connect
def on_task_success(sender, **_):
    # LedgerBackend already wrote SUCCESS together with the stored result; this is
    # for tasks whose result is not stored (ignore_result) and other backends.
    if not getattr(sender.request, "claw_succeeded", False):
        services.mark_succeeded(sender.request.id)


@signals.task_postrun.connect
def on_task_postrun(task_id=None, task=None, state=None, **_):
    # A refused copy leaves the lease to the run it was refused for (threads
    # pool: both may share this process).
    runner = getattr(task.request, "claw_runner", None) if task else None
    if runner:
        if state not in RUN_ENDED_RECORD:
            starts.flush(task_id)  # left STARTED, as a start written at once
        starts.take(task_id)  # a SUCCESS that did not apply (cancelled) leaves it
        leases.drop(task_id)
        if state not in RUN_ENDED_RECORD:
            # Ignored or rejected (requeued) with the record maybe still
            # STARTED: the next delivery must not wait for this lease to lapse.
            services.release_lease(task_id, holder=runner)
    connections.recycle()


@signals.task_failure.connect
def on_task_failure(task_id, exception, einfo=None, sender=None, **_):
    services.mark_failed(
        task_id,
        error=repr(exception),
        traceback=str(einfo.traceback) if einfo else "",
        exc=exception,
        context={"name": getattr(sender, "name", None)},
    )


@signals.task_revoked.connect
def on_task_revoked(request, terminated=False, expired=False, sender=None, **_):
    reason = "terminated" if terminated else "expired" if expired else "revoked"
    # a terminated run never returns to its body: the domain hears of it from
    # the lifecycle handlers, which need to know whether it was a chord member
    in_chord = bool(getattr(request, "chord", None))
    name = getattr(sender, "name", None)
    services.mark_revoked(
        request.id, reason=reason, context={"in_chord": in_chord, "name": name}
    )
