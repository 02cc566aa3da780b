"""Staff alerts when a task fails for good (retries exhausted; not on each retry)."""

from __future__ import annotations

import logging

from celery.signals import task_failure

log = logging.getLogger(__name__)


def how_it_failed(task) -> str:
    """What happened, from the failing request's own retry count: most failures
    are permanent errors that were never retried."""
    retries = getattr(getattr(task, "request", None), "retries", 0) or 0
    if not retries:
        return "failed on its first run, without a retry"
    return f"failed after {retries} {'retry' if retries == 1 else 'retries'}"


@task_failure.connect(dispatch_uid="claw.alert_staff_on_task_failure")
def alert_staff_on_task_failure(sender=None, task_id=None, exception=None, **kwargs):
    # task_failure fires only once a task has failed for good: a retry raises Retry
    # and sends task_retry instead.
    name = getattr(sender, "name", str(sender))
    if name == "claw.send_notification":
        return  # an alert about failing alerts would loop
    from tasks_app.alerts import notify_staff

    kind = type(exception).__name__
    try:
        notify_staff(
            f"Task {name} failed: {kind}",
            f"Task {name} ({task_id}) {how_it_failed(sender)}:\n{kind}: {exception}",
            dedupe_key=f"task-failure:{name}:{kind}",
        )
    except Exception:  # never let alerting break the worker
        log.exception("Could not alert staff about task %s", task_id)
