"""The Celery app: configured from Django settings (CELERY_*), tasks autodiscovered."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claw.settings")

# Every task in this app (ours, django-celery-beat's, Celery's built-ins) uses
# LedgerTask, so the ledger can refuse cancelled or poisoned deliveries.
app = Celery("claw", task_cls="tasks_app.base:LedgerTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

PRIORITY_MIN, PRIORITY_MAX = 0, 9
_modules_imported = False
_importing = False


def registered_tasks() -> dict:
    """Every registered task, with the tasks modules imported first.

    Celery imports them lazily (in workers); web and beat processes call this
    before looking a task up by name.
    """
    global _modules_imported, _importing
    # A worker (and beat) imported them at start (Loader.init_worker).
    if app.loader.worker_initialized:
        return app.tasks
    if not _modules_imported and not _importing:
        # Not app.loader.import_default_modules(): its import_modules signal runs
        # Celery's Django fixup, whose django.setup() reapplies LOGGING in a
        # process that is already running. That dropped every handler added
        # since (a threads worker's log went silent; pytest's caplog lost its
        # handler). Autodiscovery and CELERY_IMPORTS are imported directly.
        # A system check (tasks_app.W001) asks for the tasks while they import:
        # that nested call gets the tasks registered so far.
        _importing = True
        try:
            app.autodiscover_tasks(force=True)
            for module in app.loader.default_modules:
                app.loader.import_task_module(module)
            _modules_imported = True
        finally:
            _importing = False
    return app.tasks


def broker_priority(priority: int) -> int:
    """Map our priority (0-9, 9 highest on every broker) to the broker's own number.

    Redis (kombu's priority_steps) serves the lowest number first; RabbitMQ and the
    rest serve the highest first.
    """
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValueError(f"priority must be between 0 and 9, got {priority}")
    if app.conf.broker_url.startswith(("redis", "rediss")):
        return PRIORITY_MAX - priority
    return priority


def platform_priority(broker_value: int | None) -> int:
    """The inverse of broker_priority, for messages published by other paths."""
    if broker_value is None:
        return app.conf.task_default_priority
    if app.conf.broker_url.startswith(("redis", "rediss")):
        return PRIORITY_MAX - broker_value
    return broker_value
