"""Remote-control commands CLAW's workers answer besides Celery's own.

Imported by tasks_app.apps in every process (a worker registers the command for
its control mailbox; other processes only call it through tasks_app.workers).
"""

from __future__ import annotations

from celery.worker import control


@control.inspect_command()
def claw_report(state, **kwargs) -> dict:
    """Everything the Workers page shows, in one reply.

    Five separate inspect broadcasts each wait their whole timeout (a broadcast
    cannot know how many workers will answer), which made the page take five
    timeouts; one command answers them all in one.
    """
    return {
        "stats": control.stats(state),
        "active": control.active(state),
        "reserved": control.reserved(state),
        "scheduled": control.scheduled(state),
        "active_queues": control.active_queues(state),
    }
