"""Minimal Django settings for stock Celery + django-celery-results (scenario 1b)."""

import os

import environ

SECRET_KEY = "bench"
USE_TZ = True
INSTALLED_APPS = ["django_celery_results"]
DATABASES = {"default": environ.Env.db_url_config(os.environ["BENCH_DATABASE_URL"])}
DATABASES["default"]["CONN_MAX_AGE"] = None  # persistent connections
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CELERY_BROKER_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
CELERY_RESULT_BACKEND = "django-db"
CELERY_TASK_TRACK_STARTED = True
CELERY_RESULT_EXTENDED = True
# Without this, Celery's Django fixup closes the connection before and after every
# task, whatever CONN_MAX_AGE says; CLAW sets it too (claw/settings.py).
CELERY_DB_REUSE_MAX = 1_000_000_000
