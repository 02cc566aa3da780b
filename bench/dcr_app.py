"""Stock Celery app with django-celery-results as the result backend (scenario 1b)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.dcr_settings")

import django
from celery import Celery

django.setup()

app = Celery("dcr")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task(name="bench.noop")
def noop() -> None:
    return None
