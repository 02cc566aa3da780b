from __future__ import annotations

from claw.celery import app
from tasks_app import maintenance, rollups


@app.task(name="tasks_app.ping")
def ping_task() -> str:
    """A no-op that proves the whole path: broker, worker, ledger, results."""
    return "pong"


@app.task(name="tasks_app.cleanup_expired_results")
def cleanup_expired_results_task() -> dict:
    return maintenance.cleanup_expired()


@app.task(name="tasks_app.check_task_health")
def check_task_health_task() -> dict:
    return maintenance.check_health()


@app.task(name="tasks_app.fold_rollups")
def fold_rollups_task() -> dict:
    return {"folded": rollups.fold(), "pruned": rollups.prune()}
