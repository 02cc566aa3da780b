"""Settings for pytest: the services stack (PostgreSQL + Redis) unless overridden."""

import os

os.environ.setdefault(
    "SECRET_KEY", "test-only-key-0123456789-abcdefghijklmnopqrstuvwxyz"
)
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/claw")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("HTTPS_ONLY", "false")

from claw.settings import *  # noqa: F403

# Parallel runs on one machine keep apart by giving each its own test database
# (CLAW_TEST_DB) and Redis database (CELERY_BROKER_URL).
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("CLAW_TEST_DB", "test_claw")}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_IMPORTS = ["tests.tasks"]  # tasks that only tests use (sleep, fail, kill...)
CLAW_PROGRESS_INTERVAL = 0.2
# Tests assert counts right after writing rows; the stats cache has its own test.
CLAW_STATS_CACHE_SECONDS = 0
CLAW_HEALTH_CACHE_SECONDS = 0  # tests of the cache set it
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405 - whitenoise warns otherwise
# The manifest storage needs collectstatic; tests render admin pages without it.
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Knowledge: no rate limit on vectorize unless a test's workers set one (5/m would
# make a 50-document update take ten minutes), and short retry backoffs.
KNOWLEDGE_VECTORIZE_RATE_LIMIT = parse_rate(  # noqa: F405
    "KNOWLEDGE_VECTORIZE_RATE_LIMIT",
    os.environ.get("KNOWLEDGE_VECTORIZE_RATE_LIMIT", ""),
)
KNOWLEDGE_RETRY_BACKOFF = 1
# Suites post dozens of replies at once to load the workers; the per-user cap on
# replies in flight has its own tests (claw/tests/test_reply_cap.py).
AI_MAX_REPLIES_IN_FLIGHT = int(os.environ.get("AI_MAX_REPLIES_IN_FLIGHT", "0"))
