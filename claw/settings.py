"""The only settings module. Every value comes from the environment (see README).

Defaults give the embedded stack: SQLite in var/ and Celery's filesystem broker in
var/broker/, so `make run` needs no servers. DATABASE_URL and CELERY_BROKER_URL
switch to PostgreSQL and Redis for production.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

BASE_DIR = Path(__file__).resolve().parent.parent

# The environment is read through these helpers only; django-environ parses the
# URL-shaped values (DATABASE_URL, CACHE_URL, EMAIL_URL) once they are read.


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() not in ("true", "false", "1", "0"):
        raise ImproperlyConfigured(f"{name} must be 'true' or 'false', got {value!r}")
    return value.lower() in ("true", "1")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be an integer, got {value!r}"
        ) from None


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


VAR_DIR = Path(env_str("CLAW_VAR_DIR", BASE_DIR / "var"))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "")
SECRET_KEY_FILE = VAR_DIR / "secret_key"
if not SECRET_KEY and not env_str("DATABASE_URL", "") and SECRET_KEY_FILE.exists():
    # The embedded stack: the key `make run` generated, so that manage.py in the
    # checkout (changepassword, issue_token, the maintenance commands) works
    # without exporting anything. A deployment with a DATABASE_URL never reads it.
    SECRET_KEY = SECRET_KEY_FILE.read_text().strip()
if not SECRET_KEY:
    if not DEBUG:
        # Never fall back to a built-in key in production: sessions and password
        # reset tokens would be forgeable by anyone who has read this file.
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is false (on the embedded stack, "
            f"`make run` creates {SECRET_KEY_FILE} and manage.py reads it)"
        )
    SECRET_KEY = "insecure-debug-only-key-" + "x" * 40

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served here, not from a CDN
    "axes",  # locks out a username/IP pair after repeated failed logins
    "django_celery_results",
    "django_celery_beat",
    "tasks_app",
    "knowledge",
    "writing",
    "claw",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: answers a locked-out login with 429.
    "axes.middleware.AxesMiddleware",
]

# Login lockout (django-axes): after AXES_FAILURE_LIMIT failed logins a username is
# locked for that IP address for AXES_COOLOFF_MINUTES (keyed on both, so guessing
# at the admin's name from elsewhere cannot lock the admin out everywhere);
# `manage.py axes_reset` unlocks. Only logins through a web page are counted (see
# claw.auth); API tokens are not passwords.
AUTHENTICATION_BACKENDS = [
    "claw.auth.WebLoginLockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # no banner on every manage.py command

ROOT_URLCONF = "claw.urls"
WSGI_APPLICATION = "claw.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------
DATABASES = {
    "default": environ.Env.db_url_config(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'claw.sqlite3'}")
    )
}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat write to one file: WAL lets readers and one writer work
    # at once, the busy timeout waits instead of failing with "database is
    # locked", and IMMEDIATE takes the write lock at BEGIN so two transactions
    # cannot deadlock upgrading read locks.
    _db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A local file: nothing to reconnect to, so keep connections (workers reuse
    # theirs between tasks, tasks_app.connections).
    _db["CONN_MAX_AGE"] = None
else:
    _db["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 60)
    # A restarted PostgreSQL leaves dead persistent connections; check before reuse.
    _db["CONN_HEALTH_CHECKS"] = True
    _db.setdefault("OPTIONS", {})["connect_timeout"] = env_int("DB_CONNECT_TIMEOUT", 5)
    # The ledger's per-task statements bind their parameters on the server
    # (tasks_app.ledger_writes._cursor), so psycopg prepares each once per
    # connection after this many runs instead of PostgreSQL parsing and planning
    # it for every task. Django's own queries bind on the client and are never
    # prepared. 0: never, for a pooler in transaction mode that cannot keep
    # prepared statements (PgBouncer before 1.21).
    _db["OPTIONS"]["prepare_threshold"] = env_int("DB_PREPARE_THRESHOLD", 5) or None

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"
    },
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "Asia/Shanghai")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", VAR_DIR / "static"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Security (manage.py check --deploy is clean with DEBUG off) ------------
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
# Behind a TLS-terminating proxy set SECURE_SSL_REDIRECT=true; the embedded stack
# serves plain HTTP on loopback, so the default follows HTTPS_ONLY.
HTTPS_ONLY = env_bool("HTTPS_ONLY", not DEBUG)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", HTTPS_ONLY)
SESSION_COOKIE_SECURE = HTTPS_ONLY
CSRF_COOKIE_SECURE = HTTPS_ONLY
# X-Forwarded-Proto says the client used HTTPS only when a proxy in front sets it
# (and strips the client's own); trusted without one, any client could claim HTTPS
# over plain HTTP (no redirect, secure cookies sent in clear). Off unless said.
TRUST_PROXY_SSL_HEADER = env_bool("TRUST_PROXY_SSL_HEADER", False)
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if TRUST_PROXY_SSL_HEADER else None
)
SECURE_REDIRECT_EXEMPT = [r"^health$"]
X_FRAME_OPTIONS = "DENY"

# --- Email (console by default; SMTP from EMAIL_URL) ------------------------
vars().update(environ.Env.email_url_config(env_str("EMAIL_URL", "consolemail://")))
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "claw@localhost")
STAFF_ALERT_EMAILS = env_list("STAFF_ALERT_EMAILS", [])

# --- Notifications and LLM providers (claw app) ------------------------------
NOTIFY_PUSH_WEBHOOK_URL = env_str("NOTIFY_PUSH_WEBHOOK_URL", "")
NOTIFY_SMS_WEBHOOK_URL = env_str("NOTIFY_SMS_WEBHOOK_URL", "")
NOTIFY_WEBHOOK_TIMEOUT = env_float("NOTIFY_WEBHOOK_TIMEOUT", 10)
# Seconds during which staff alerts with the same dedupe key are sent once.
STAFF_ALERT_WINDOW = env_int("STAFF_ALERT_WINDOW", 900)
LLM_PROVIDER = env_str("LLM_PROVIDER", "extractive")
LLM_BASE_URL = env_str("LLM_BASE_URL", "https://api.openai.com/v1")
LLM_API_KEY = env_str("LLM_API_KEY", "")
LLM_MODEL = env_str("LLM_MODEL", "gpt-4o-mini")
LLM_TIMEOUT = env_float("LLM_TIMEOUT", 60)

# --- Conversations (claw app: AI replies) -----------------------------------


RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(name: str, value: str) -> tuple[int, float] | None:
    """ "10/60" -> (10 starts, 60 seconds); Celery's "5/m" -> (5, 60); empty ->
    None (no limit)."""
    if not value:
        return None
    try:
        count, seconds = value.split("/")
        rate = int(count), RATE_UNITS.get(seconds) or float(seconds)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must look like 'starts/seconds' or 'starts/m', e.g. 10/60; "
            f"got {value!r}"
        ) from None
    if rate[0] < 1 or rate[1] <= 0:
        raise ImproperlyConfigured(f"{name}: both numbers must be positive")
    return rate


# Starts of claw.generate_ai_response across the whole cluster (Celery's own
# rate_limit counts per worker). Over the limit a reply is deferred, not failed.
AI_RATE_LIMIT = parse_rate("AI_RATE_LIMIT", env_str("AI_RATE_LIMIT", "10/60"))
# Where the shared counter lives: "redis" (the broker's Redis), "database" (a row
# updated conditionally; works on SQLite), or "auto" (Redis if the broker is Redis).
AI_RATE_LIMIT_BACKEND = env_str("AI_RATE_LIMIT_BACKEND", "auto")
# (auto, redis or database: system check claw.E101)
# A reply deferred this many times fails; each deferral is one delivery, and the
# ledger's poisoned-task guard counts deliveries against max_retries.
AI_MAX_DEFERRALS = env_int("AI_MAX_DEFERRALS", 30)
# Replies one user may have pending or generating at once, counted in the database
# when a message is accepted (429 with Retry-After past it), so one user filling
# the queue cannot make everyone else's replies wait out their deferrals. 0: no cap.
AI_MAX_REPLIES_IN_FLIGHT = env_int("AI_MAX_REPLIES_IN_FLIGHT", 5)
AI_IN_FLIGHT_RETRY_AFTER = env_int("AI_IN_FLIGHT_RETRY_AFTER", 10)
# Transient provider errors (timeouts, 429, 5xx): retries with exponential backoff
# (AI_RETRY_BACKOFF * 2**n seconds, jittered, at most AI_RETRY_BACKOFF_MAX).
AI_TRANSIENT_RETRIES = 3
AI_RETRY_BACKOFF = env_float("AI_RETRY_BACKOFF", 5)
AI_RETRY_BACKOFF_MAX = env_float("AI_RETRY_BACKOFF_MAX", 120)
# At the soft limit a reply keeps what has streamed, marked truncated. The deadline
# does the same from inside the stream, for pools without soft limits (threads);
# keep it below the soft limit.
AI_REPLY_SOFT_TIME_LIMIT = env_int("AI_REPLY_SOFT_TIME_LIMIT", 120)
AI_REPLY_TIME_LIMIT = env_int("AI_REPLY_TIME_LIMIT", 180)
AI_REPLY_DEADLINE = env_float("AI_REPLY_DEADLINE", 110)
# Minimum seconds between two writes of the streamed text to the message.
AI_STREAM_SAVE_INTERVAL = env_float("AI_STREAM_SAVE_INTERVAL", 0.5)
# Passages retrieved per reply (best scores over all attached knowledge bases).
AI_PASSAGES = env_int("AI_PASSAGES", 5)
# (1 to 100, knowledge.search.MAX_K: system check claw.E102)
# --- end of Conversations ---------------------------------------------------

# --- AI worker pool (a pool made for waiting) --------------------------------
# An AI reply spends nearly all of its time waiting for the model server, so the
# worker of ai_high_priority runs Celery's threads pool with dozens of threads
# (runstack, docker-compose.yml); prefork stays for CPU-bound knowledge work.
# Celery's soft and hard time limits need prefork. On threads a reply's stream
# ends at AI_REPLY_DEADLINE (claw.llm cuts a stream that goes quiet), every other
# wait has its own timeout, and cancel stops it at its next progress write.
CELERY_AI_POOL = env_str("CELERY_AI_POOL", "threads")
CELERY_AI_CONCURRENCY = env_int("CELERY_AI_CONCURRENCY", 32)
# (threads or prefork, and at least 1: system checks tasks_app.E101, E102)
# PostgreSQL statement_timeout of this process's connections, in seconds (0:
# none). A thread cannot be killed at a hard time limit, so docker-compose.yml
# sets it for worker-ai: a statement stuck behind a lock fails instead of holding
# a thread forever. Not for web or migrations, whose statements may be long.
DB_STATEMENT_TIMEOUT = env_int("DB_STATEMENT_TIMEOUT", 0)
if DB_STATEMENT_TIMEOUT and _db["ENGINE"] != "django.db.backends.sqlite3":
    _options = _db["OPTIONS"].get("options", "")  # keep any from DATABASE_URL
    _db["OPTIONS"]["options"] = (
        f"{_options} -c statement_timeout={DB_STATEMENT_TIMEOUT * 1000}".strip()
    )
# --- end of AI worker pool ----------------------------------------------------

# --- Knowledge (knowledge app: chunking, embeddings, search, uploads) --------
# Characters per chunk and characters repeated between neighbouring chunks.
KNOWLEDGE_CHUNK_SIZE = env_int("KNOWLEDGE_CHUNK_SIZE", 800)
KNOWLEDGE_CHUNK_OVERLAP = env_int("KNOWLEDGE_CHUNK_OVERLAP", 100)
# Largest uploaded file or JSON document content, in bytes (larger: 413).
KNOWLEDGE_MAX_UPLOAD_BYTES = env_int("KNOWLEDGE_MAX_UPLOAD_BYTES", 5 * 1024 * 1024)
# Django refuses a request body over this before any view runs. A JSON document
# may escape each byte of its content to six ("\\u4e2d" for a Chinese character's
# three), so the body limit follows the content limit; anything larger is a JSON
# 413 (claw.urls.handler400), never Django's HTML 400.
DATA_UPLOAD_MAX_MEMORY_SIZE = 6 * KNOWLEDGE_MAX_UPLOAD_BYTES + 64 * 1024
# Memory each process may use for cached search matrices (100k chunks of
# dimension 384 take about 150 MB); least recently searched knowledge bases go first.
KNOWLEDGE_SEARCH_CACHE_MB = env_int("KNOWLEDGE_SEARCH_CACHE_MB", 256)
# Starts of knowledge.vectorize_document across the whole cluster, counted like
# AI_RATE_LIMIT's (tasks_app/ratelimit.py; Celery's own rate_limit would count per
# worker). Over the limit a run is deferred, not failed; empty means no limit.
KNOWLEDGE_VECTORIZE_RATE_LIMIT = parse_rate(
    "KNOWLEDGE_VECTORIZE_RATE_LIMIT",
    env_str("KNOWLEDGE_VECTORIZE_RATE_LIMIT", "5/m"),
)
# A vectorize deferred this many times fails its document. A deferral waits at
# most 10 windows, so 100 covers a run about 1,000 windows down the line.
KNOWLEDGE_MAX_DEFERRALS = env_int("KNOWLEDGE_MAX_DEFERRALS", 100)
# Seconds of the first automatic retry of a transient embedding error (doubles).
KNOWLEDGE_RETRY_BACKOFF = env_int("KNOWLEDGE_RETRY_BACKOFF", 10)
# Time limits (seconds) of knowledge.vectorize_document (the soft one is also the
# deadline checked between batches on a threads pool) and of
# knowledge.update_knowledge_base's own run (plan, then Task.replace).
KNOWLEDGE_VECTORIZE_SOFT_TIME_LIMIT = env_int(
    "KNOWLEDGE_VECTORIZE_SOFT_TIME_LIMIT", 300
)
KNOWLEDGE_VECTORIZE_TIME_LIMIT = env_int("KNOWLEDGE_VECTORIZE_TIME_LIMIT", 600)
KNOWLEDGE_UPDATE_SOFT_TIME_LIMIT = env_int("KNOWLEDGE_UPDATE_SOFT_TIME_LIMIT", 180)
KNOWLEDGE_UPDATE_TIME_LIMIT = env_int("KNOWLEDGE_UPDATE_TIME_LIMIT", 300)
# Texts per embedding call; progress is reported after each batch.
EMBEDDING_BATCH_SIZE = env_int("EMBEDDING_BATCH_SIZE", 64)
# The openai provider: any OpenAI-compatible /v1/embeddings endpoint.
EMBEDDING_BASE_URL = env_str("EMBEDDING_BASE_URL", "https://api.openai.com/v1")
EMBEDDING_API_KEY = env_str("EMBEDDING_API_KEY", "")
EMBEDDING_TIMEOUT = env_float("EMBEDDING_TIMEOUT", 30)
EMBEDDING_OPENAI_MODEL = env_str("EMBEDDING_OPENAI_MODEL", "text-embedding-3-small")
# The sentence-transformers provider: a model name in the local Hugging Face cache
# or a path; it is never downloaded.
EMBEDDING_ST_MODEL = env_str("EMBEDDING_ST_MODEL", "all-MiniLM-L6-v2")
# The provider of knowledge bases created without one (API, admin, writing-job
# context). hashing: fast and exact-term, no semantics; e5-small: understands
# paraphrases and Chinese <-> English but vectorizes about 3 English or 0.7
# Chinese 800-character chunks per CPU-second here (README, "Embedding
# providers"). Existing knowledge bases keep theirs.
KNOWLEDGE_DEFAULT_PROVIDER = env_str("KNOWLEDGE_DEFAULT_PROVIDER", "hashing")
# --- end of Knowledge ---------------------------------------------------------

# --- Writing jobs (writing app: outlines and documents) --------------------
# A section that fails is left out of the document, marked missing, instead of
# failing the whole job (the default of each job; a request may say otherwise).
JOBS_ALLOW_MISSING_SECTIONS = env_bool("JOBS_ALLOW_MISSING_SECTIONS", False)
# Passages an outline job retrieves (best scores over its knowledge bases; 1-100).
JOBS_OUTLINE_PASSAGES = env_int("JOBS_OUTLINE_PASSAGES", 12)
# (1 to 100, knowledge.search.MAX_K: system check writing.E101)
# Passages scoring below this share of the best one are left out of an outline
# (search always returns its k best, however unrelated); 0 keeps them all.
JOBS_MIN_RELATIVE_SCORE = env_float("JOBS_MIN_RELATIVE_SCORE", 0.25)
# Most sections of an outline, generated or posted.
JOBS_MAX_SECTIONS = env_int("JOBS_MAX_SECTIONS", 20)
# (1 to 100: system check writing.E102)
# Time limits of one section's task (knowledge.write_section), in seconds.
JOBS_SECTION_SOFT_TIME_LIMIT = env_int("JOBS_SECTION_SOFT_TIME_LIMIT", 120)
JOBS_SECTION_TIME_LIMIT = env_int("JOBS_SECTION_TIME_LIMIT", 180)
# ...of the outline's (knowledge.generate_outline_from_query) and of the document
# task's own run (knowledge.generate_document_from_outline: plan, Task.replace).
JOBS_OUTLINE_SOFT_TIME_LIMIT = env_int("JOBS_OUTLINE_SOFT_TIME_LIMIT", 120)
JOBS_OUTLINE_TIME_LIMIT = env_int("JOBS_OUTLINE_TIME_LIMIT", 180)
JOBS_DOCUMENT_SOFT_TIME_LIMIT = env_int("JOBS_DOCUMENT_SOFT_TIME_LIMIT", 180)
JOBS_DOCUMENT_TIME_LIMIT = env_int("JOBS_DOCUMENT_TIME_LIMIT", 300)
# --- end of Writing jobs --------------------------------------------------------

# --- Cache (API throttles, alert de-duplication, dashboard counts) -----------
# Shared by every process by default: a per-process locmem cache would let each
# gunicorn worker keep its own throttle counts (N workers, N times the rate). The
# table is created by migrate (claw 0004); production points CACHE_URL at Redis.
CACHE_TABLE = "claw_cache"
CACHES = {
    "default": environ.Env.cache_url_config(
        env_str("CACHE_URL", f"dbcache://{CACHE_TABLE}")
    )
}

# --- REST framework ---------------------------------------------------------
# Days an API token lives from its issue (manage.py issue_token --days, or the
# admin, may set another lifetime); 0: tokens never expire.
API_TOKEN_DAYS = env_int("API_TOKEN_DAYS", 90)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tasks_app.api.authentication.HashedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON bodies only; an endpoint that takes uploads sets its own parsers.
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "tasks_app.api.pagination.StrictPageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "tasks_app.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "user": env_str("API_THROTTLE_USER", "600/min"),
        "submit": env_str("API_THROTTLE_SUBMIT", "120/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "CLAW API",
    "DESCRIPTION": "Tasks, workers, knowledge bases and conversations.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # /api/docs/ must work offline: Swagger UI from the package's static files.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several models have a "status" with its own choices; name each set.
    "ENUM_NAME_OVERRIDES": {
        "MessageStatusEnum": "claw.models.Message.Status",
        "NotificationStatusEnum": "claw.models.Notification.Status",
        "DocumentStatusEnum": "knowledge.models.Document.Status",
        "WritingSectionStatusEnum": "writing.models.WritingSection.Status",
        "WritingJobKindEnum": "writing.models.WritingJob.Kind",
        "WritingJobStateEnum": "writing.models.WritingJob.State",
        # the task API's names, as they were before writing jobs had their own
        "StateEnum": "tasks_app.models.TaskState",
        "KindEnum": "tasks_app.models.TaskEvent.Kind",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tasks_app.live.add_to_schema",  # the SSE streams (async views)
        "tasks_app.api.schema.add_error_responses",
    ],
}

# --- Celery -----------------------------------------------------------------
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
IS_FILESYSTEM_BROKER = CELERY_BROKER_URL.startswith("filesystem")
IS_REDIS_BROKER = CELERY_BROKER_URL.startswith(("redis", "rediss"))
# kombu's Redis transport with one round trip per message: pop and unacked write in
# one script, acks sent with the next fetch (tasks_app.broker_transport). For
# redis:// only: an explicit transport would drop kombu's own defaults for
# rediss:// and the redis+socket:// form would ignore it.
if CELERY_BROKER_URL.startswith("redis://"):
    CELERY_BROKER_TRANSPORT = env_str(
        "CELERY_BROKER_TRANSPORT", "tasks_app.broker_transport:Transport"
    )

# --- Live events (Server-Sent Events streams, tasks_app.live) -------------------
# Where workers publish TaskEvents and reply chunks for live readers: the broker's
# Redis on the services stack; blank (the embedded stack) and streams read the
# database every CLAW_LIVE_POLL_INTERVAL seconds instead.
CLAW_LIVE_REDIS_URL = env_str(
    "CLAW_LIVE_REDIS_URL", CELERY_BROKER_URL if IS_REDIS_BROKER else ""
)
CLAW_LIVE_POLL_INTERVAL = env_float("CLAW_LIVE_POLL_INTERVAL", 0.25)
CLAW_LIVE_HEARTBEAT = env_float("CLAW_LIVE_HEARTBEAT", 15)
CLAW_LIVE_RETRY_MS = env_int("CLAW_LIVE_RETRY_MS", 2000)
# Each reply's chunks are also kept in a bounded Redis Stream for late joiners.
CLAW_LIVE_STREAM_MAXLEN = env_int("CLAW_LIVE_STREAM_MAXLEN", 5000)
CLAW_LIVE_STREAM_TTL = env_int("CLAW_LIVE_STREAM_TTL", 3600)
# Threads per web process serving the REST API and admin under ASGI (claw.asgi);
# each may hold a database connection (size PostgreSQL's max_connections for it).
CLAW_WSGI_THREADS = env_int("CLAW_WSGI_THREADS", 8)
# Redis redelivers unacked messages after visibility_timeout, so keep it above the
# longest hard time limit of any registered task (services.longest_time_limit;
# system check tasks_app.W001) or acks_late tasks run twice.
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 2 * 60 * 60)

if IS_FILESYSTEM_BROKER:
    # In and out are the same folder (one queue store for producer and consumer);
    # the control folder holds fanout bindings, so broadcast (ping, inspect,
    # revoke) works without a server.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
    # kombu expects the folders to exist; every process (web, worker, beat) may be
    # the first to start on a fresh clone.
    for _folder in ("queue", "control", "processed"):
        (BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
        # Ten priority levels. Redis serves the lowest number first; claw.celery
        # maps our 9-is-highest scale onto it (see broker_priority).
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
        # Messages of a worker killed outright sit in Redis' unacked hash until a
        # sweep finds them older than the visibility timeout; kombu sweeps every
        # interval * throttle seconds (100 s by default).
        "unacked_restore_interval": env_int("CELERY_UNACKED_RESTORE_INTERVAL", 10),
        "unacked_restore_throttle": env_int("CELERY_UNACKED_RESTORE_THROTTLE", 10),
        # Each sweep holds a Redis lock; a worker killed while holding it leaves
        # it for its expiry (kombu: 300 s), and no worker restores anything
        # until then. A sweep takes milliseconds, and restore_by_tag is a WATCHed
        # transaction, so two overlapping sweeps cannot restore a message twice.
        "unacked_mutex_expire": env_int("CELERY_UNACKED_MUTEX_EXPIRE", 30),
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = env_int("CELERY_BROKER_CONNECTION_TIMEOUT", 4)
CELERY_BROKER_POOL_LIMIT = env_int("CELERY_BROKER_POOL_LIMIT", 10)

# JSON only. Pickle lets anyone who can write to the broker run code in workers.
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
# Payloads above this many bytes are gzip-compressed by services.submit.
CLAW_COMPRESS_ABOVE_BYTES = env_int("CLAW_COMPRESS_ABOVE_BYTES", 16 * 1024)

CELERY_RESULT_BACKEND = "tasks_app.backend:LedgerBackend"  # django-celery-results
CELERY_RESULT_EXTENDED = True  # store task name, args and worker on TaskResult
# Retry storing a result through a database restart (LedgerBackend decides which
# errors are safe); backoff from 10 ms, about 20 s in all.
CELERY_RESULT_BACKEND_ALWAYS_RETRY = True
CELERY_RESULT_BACKEND_MAX_RETRIES = 12
CELERY_RESULT_EXPIRES = env_int("CELERY_RESULT_EXPIRES_DAYS", 7) * 24 * 3600
# The ledger records STARTED (task_prerun); LedgerBackend stores no STARTED
# TaskResult either way and answers AsyncResult.state STARTED from the ledger.
CELERY_TASK_TRACK_STARTED = False
CELERY_TASK_ACKS_LATE = (
    True  # redeliver if a worker dies mid-task; tasks are idempotent
)
CELERY_TASK_REJECT_ON_WORKER_LOST = True  # ...including when a child process is killed
# LLM calls are slow: a worker on a slow queue must not hoard messages another
# worker could start. A worker that consumes only short-task queues takes
# CLAW_SHORT_QUEUE_PREFETCH per process instead (workers.prefetch_multiplier_for).
# The filesystem broker is polled: once a worker holds its prefetch limit it
# sleeps a polling interval before it looks again, so the embedded stack (one
# worker) prefetches 8 per process; with no acknowledgements there, a killed
# worker's prefetched messages come back through check_task_health (README).
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int(
    "CELERY_WORKER_PREFETCH_MULTIPLIER", 8 if IS_FILESYSTEM_BROKER else 1
)
CLAW_SLOW_QUEUES = ("ai_high_priority", "knowledge_default", "knowledge_remote")
CLAW_SHORT_QUEUE_PREFETCH = env_int("CLAW_SHORT_QUEUE_PREFETCH", 4)
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 2)
# Recycling a pool process bounds a slow leak, but each recycle stalls: measured
# on tiny tasks at -c 2, a job already scheduled for the exiting process waited
# up to 2.7 s for another, and two processes recycled together left the worker
# with none for 0.4 s; at 1,000 tasks per process that cost scenario 1 a quarter
# of its throughput (bench/NOTES.md). 10,000 recycles a busy process every few
# minutes instead of every few seconds.
CELERY_WORKER_MAX_TASKS_PER_CHILD = env_int("CELERY_WORKER_MAX_TASKS_PER_CHILD", 10_000)
# With acks_late, a broker connection loss would otherwise leave running tasks to be
# redelivered while they still run: cancel them so the redelivery is the only run.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_WORKER_POOL_RESTARTS = True  # admin "pool restart" needs it
# Seconds the Workers page, GET /api/v1/workers/ and /health wait for workers to
# answer (one broadcast each); the health check's LOST decision waits 1 s.
CLAW_WORKER_REPLY_TIMEOUT = env_float("CLAW_WORKER_REPLY_TIMEOUT", 0.5)
# Task events (for Flower or `celery events`) cost 3-4 broker publishes per task;
# nothing in CLAW reads them (the ledger is the history), so they are opt-in.
# Worker heartbeats are sent either way.
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("CELERY_WORKER_SEND_TASK_EVENTS", False)
CELERY_TASK_SEND_SENT_EVENT = CELERY_WORKER_SEND_TASK_EVENTS
# Celery's Django fixup closes every database connection before and after every
# task unless this is set (a new PostgreSQL connection per task); with it, a
# worker keeps its connections and tasks_app.connections.recycle closes broken or
# CONN_MAX_AGE-old ones after each task, as Django does after each request.
CELERY_DB_REUSE_MAX = 1_000_000_000
# Time limits of the tasks that set none of their own.
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 240)
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True
CELERY_BEAT_SCHEDULER = "tasks_app.beat:LeaderScheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = 5  # notice admin edits to schedules quickly
DJANGO_CELERY_BEAT_TZ_AWARE = True

CLAW_QUEUES = (
    "ai_high_priority",
    "knowledge_default",
    # knowledge work that waits on a remote endpoint (vectorizing for an openai
    # knowledge base): served with ai_high_priority by the threads-pool worker.
    "knowledge_remote",
    "notification_default",
    "default",
)
# The queues of the worker on a pool made for waiting (runstack's worker-ai and
# docker-compose's worker-ai); every other queue has a prefork worker.
CLAW_THREADS_QUEUES = ("ai_high_priority", "knowledge_remote")
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_QUEUES = [
    # x-max-priority gives RabbitMQ users the same ten levels; Redis ignores it.
    Queue(name, Exchange(name), routing_key=name, queue_arguments={"x-max-priority": 9})
    for name in CLAW_QUEUES
]
CELERY_TASK_ROUTES = {
    "claw.generate_ai_response": {"queue": "ai_high_priority"},
    "claw.send_notification": {"queue": "notification_default"},
    "knowledge.*": {"queue": "knowledge_default"},
    "tasks_app.*": {"queue": "default"},
}
CELERY_TASK_DEFAULT_PRIORITY = 5

# --- The ledger -------------------------------------------------------------
# Minimum seconds between two progress writes of one task (the last one always lands).
CLAW_PROGRESS_INTERVAL = env_float("CLAW_PROGRESS_INTERVAL", 0.5)
# Redeliveries of one attempt after its worker died, before the ledger stops it.
CLAW_MAX_REDELIVERIES = env_int("CLAW_MAX_REDELIVERIES", 3)
# Seconds a running attempt's lease lasts; the process running it renews it
# every third of that. While the lease is live a second delivery
# of the attempt is refused; once it lapsed (the worker died) a redelivery takes
# the attempt over. Keep it well below the visibility timeout (system check W002).
CLAW_LEASE_SECONDS = env_float("CLAW_LEASE_SECONDS", 60)
# Seconds a task runs before its STARTED (with the lease) is written; a shorter
# run's STARTED is written by its final SUCCESS statement (tasks_app.starts), so
# a tiny task costs its worker one commit (about 15 % of scenario 1, bench/NOTES.md).
# The cost: task_started reaches live clients up to this late, and a cancel in
# this window finds the record PENDING and cannot terminate the run. 0 writes
# STARTED before every run.
# Keep it far below the lease and the visibility timeout (system check W003): a
# run starts late only if its delivery plus this is within half the timeout.
CLAW_STARTED_AFTER_SECONDS = env_float("CLAW_STARTED_AFTER_SECONDS", 0.1)
# Seconds a running task waits for a lost database (a restart, an outage) before
# its database error fails it: it backs off, reconnects and runs again
# (tasks_app.retries.ride_out_database_outage; a streaming reply keeps its text).
CLAW_DATABASE_OUTAGE_SECONDS = env_float("CLAW_DATABASE_OUTAGE_SECONDS", 60)
# Seconds the dashboard's and the stats API's aggregates (and the dashboard's
# worker ping) are kept in the cache; 0 computes them on every request.
CLAW_STATS_CACHE_SECONDS = env_int("CLAW_STATS_CACHE_SECONDS", 15)
# Seconds without a heartbeat after which beat counts as down.
CLAW_BEAT_STALE_AFTER = env_int("CLAW_BEAT_STALE_AFTER", 120)
# Seconds /health reuses its checks' results (a worker broadcast and a broker
# connection), so requests to it cannot tie up web workers; 0 checks every time.
CLAW_HEALTH_CACHE_SECONDS = env_int("CLAW_HEALTH_CACHE_SECONDS", 5)
# Rollups (tasks_app.rollups): seconds between two folds of new ledger events
# into the per-minute/hour counts the dashboard, stats and /metrics read; how
# long an event id missing from the sequence (its transaction not yet
# committed) is looked for again; days per-minute and per-hour rows are kept.
CLAW_ROLLUP_SECONDS = env_int("CLAW_ROLLUP_SECONDS", 10)
CLAW_ROLLUP_GAP_SECONDS = env_int("CLAW_ROLLUP_GAP_SECONDS", 900)
CLAW_ROLLUP_MINUTES_DAYS = env_int("CLAW_ROLLUP_MINUTES_DAYS", 2)
CLAW_ROLLUP_HOURS_DAYS = env_int("CLAW_ROLLUP_HOURS_DAYS", 90)
# Bearer token that may read /metrics (besides a staff session); unset: staff only.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")


def _not_kombu_default_hostname(record) -> bool:
    # kombu warns on every connection to a URL without a host: the embedded
    # stack's filesystem:// has none to give, so every command printed it.
    return not record.getMessage().startswith("No hostname was supplied")


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "no_default_hostname": {
            "()": "django.utils.log.CallbackFilter",
            "callback": _not_kombu_default_hostname,
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "kombu.connection": {"filters": ["no_default_hostname"]},
    },
}
# Days a finished record (and its events) is kept, per final state.
CLAW_RECORD_RETENTION_DAYS = {
    "SUCCESS": env_int("CLAW_RETENTION_SUCCESS_DAYS", 7),
    "REVOKED": env_int("CLAW_RETENTION_REVOKED_DAYS", 30),
    "FAILURE": env_int("CLAW_RETENTION_FAILURE_DAYS", 90),
    "LOST": env_int("CLAW_RETENTION_FAILURE_DAYS", 90),
}


def parse_retention_overrides(value: str) -> dict[str, dict[str, int]]:
    """ "task.name:STATE=days,..." -> {"task.name": {"STATE": days}}."""
    overrides: dict[str, dict[str, int]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            target, days = item.split("=")
            name, state = target.rsplit(":", 1)
            overrides.setdefault(name.strip(), {})[state.strip().upper()] = int(days)
        except ValueError:
            raise ImproperlyConfigured(
                f"CLAW_RETENTION_OVERRIDES: expected 'task.name:STATE=days', got {item!r}"
            ) from None
    return overrides


# Per-task exceptions to the retention above, e.g.
# "claw.send_notification:SUCCESS=1,knowledge.vectorize_document:FAILURE=180".
CLAW_RETENTION_OVERRIDES = parse_retention_overrides(
    env_str("CLAW_RETENTION_OVERRIDES", "")
)
# check_task_health: a PENDING record older than this whose message is not in the
# broker is re-published (broker data loss).
CLAW_REPUBLISH_PENDING_AFTER = env_int("CLAW_REPUBLISH_PENDING_AFTER", 300)
# Staff alerts raised by check_task_health; an active alert is re-sent at most once
# per CLAW_ALERT_REPEAT_MINUTES.
CLAW_ALERT_BACKLOG = env_int("CLAW_ALERT_BACKLOG", 1000)
CLAW_ALERT_FAILURE_RATIO = env_float("CLAW_ALERT_FAILURE_RATIO", 0.25)
CLAW_ALERT_FAILURE_MIN_TASKS = env_int("CLAW_ALERT_FAILURE_MIN_TASKS", 20)
CLAW_ALERT_MISSED_RUN_GRACE = env_int("CLAW_ALERT_MISSED_RUN_GRACE", 600)
CLAW_ALERT_REPEAT_MINUTES = env_int("CLAW_ALERT_REPEAT_MINUTES", 240)
