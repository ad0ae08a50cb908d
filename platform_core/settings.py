"""Django settings, read from the environment.

With no environment at all the platform runs on embedded defaults that need no
server: SQLite under ``DATA_DIR`` and the in-memory channel layer.
``DATABASE_URL`` switches to PostgreSQL and ``REDIS_URL`` to channels-redis.

``DJANGO_DEBUG`` is off unless set; with it off (production mode) the platform
refuses to start without a real ``DJANGO_SECRET_KEY`` and an explicit
``DJANGO_ALLOWED_HOSTS``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


_Number = TypeVar("_Number", int, float)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of 1/0, true/false, yes/no or on/off, not {raw!r}.")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    return _env_number(name, default, int, "an integer", minimum)


def env_float(name: str, default: float, minimum: float | None = None) -> float:
    return _env_number(name, default, _finite_float, "a finite number", minimum)


def _finite_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _env_number(name: str, default: _Number, parse: Callable[[str], _Number], kind: str,
                minimum: _Number | None) -> _Number:
    """``name``'s value read by ``parse`` (ValueError: not ``kind``), ``default`` when unset or blank."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {kind}, not {raw!r}.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)

DATA_DIR = Path(os.environ.get("PLATFORM_DATA_DIR", BASE_DIR / "data")).resolve()
MODEL_STORE = Path(os.environ.get("PLATFORM_MODEL_STORE", DATA_DIR / "models")).resolve()

_INSECURE_KEY = "django-insecure-development-only-key-never-use-in-production"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
        )
    SECRET_KEY = _INSECURE_KEY
elif not DEBUG and (SECRET_KEY.startswith("django-insecure") or len(SECRET_KEY) < 50
                    or len(set(SECRET_KEY)) < 5):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is too weak for production: use at least 50 random characters."
    )

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS must list the host names this server answers to when DJANGO_DEBUG is off."
    )

# Origins allowed to open WebSocket connections (scheme://host[:port]). By
# default the allowed hosts on http and https, any port in debug mode.
PLATFORM_ALLOWED_ORIGINS = env_list("PLATFORM_ALLOWED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django_prometheus",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "inference",
    "streaming",
    "monitoring",
    "frontend",
    # Last: its ready() wires the apps above together (platform_core.wiring).
    "platform_core",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (the dashboard's CSS, scripts and chart library) from
    # STATIC_ROOT after collectstatic, or straight from the apps in debug mode.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "platform_core.urls"
ASGI_APPLICATION = "platform_core.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# Database: SQLite under DATA_DIR unless DATABASE_URL says otherwise.
_SQLITE_PATH = DATA_DIR / "platform.sqlite3"
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60))
    if _db["ENGINE"] == "django.db.backends.postgresql":
        _db["ENGINE"] = "django_prometheus.db.backends.postgresql"
    elif _db["ENGINE"] == "django.db.backends.sqlite3":
        _db["ENGINE"] = "django_prometheus.db.backends.sqlite3"
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    _db = {
        "ENGINE": "django_prometheus.db.backends.sqlite3",
        "NAME": str(_SQLITE_PATH),
    }
if _db["ENGINE"].endswith("sqlite3"):
    # WAL lets the prediction-log writer insert while the admin reads; the
    # timeout makes a briefly locked file a wait, not an error.
    _db.setdefault("OPTIONS", {})
    _db["OPTIONS"].setdefault("timeout", 20)
    _db["OPTIONS"].setdefault(
        "init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
    _db["OPTIONS"].setdefault("transaction_mode", "IMMEDIATE")
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Channel layer: in-memory unless REDIS_URL is set.
REDIS_URL = os.environ.get("REDIS_URL", "")


def redis_host(url: str) -> dict:
    """A channels-redis host whose pooled connections survive a Redis restart.

    A connection the server closed (Redis restarted, a proxy timed it out) is
    found stale only when used; its command is then retried on a new one
    instead of failing the caller (a dashboard's ``group_add``, a publish).
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return {
        "address": url,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, ConnectionResetError],
        "health_check_interval": 5,
    }


if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_host(REDIS_URL)], "capacity": 1000, "expiry": 10},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", DATA_DIR / "static"))

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# Production hardening; `manage.py check --deploy` passes with DEBUG off.
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
    # /metrics and the health check are scraped over plain HTTP inside the
    # deployment network.
    SECURE_REDIRECT_EXEMPT = [r"^metrics$", r"^healthz$"]
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("PLATFORM_LOG_LEVEL", "INFO")},
    "loggers": {
        "daphne": {"level": "WARNING"},
        "django.channels.server": {"level": "WARNING"},
    },
}

# --- The platform's own settings -------------------------------------------

# Authentication of prediction clients by API key. Turning it off is a
# development convenience that must be asked for explicitly.
PLATFORM_REQUIRE_API_KEY = env_bool("PLATFORM_REQUIRE_API_KEY", True)
PLATFORM_AUTH_TIMEOUT_S = float(os.environ.get("PLATFORM_AUTH_TIMEOUT_S", "5"))
# How often the API keys of open connections are checked: a revoked or expired
# key's connections are closed (4401) within this time.
PLATFORM_KEY_CHECK_INTERVAL_S = float(os.environ.get("PLATFORM_KEY_CHECK_INTERVAL_S", "1"))

# Per-connection and per-request limits announced in the `ready` message.
PLATFORM_MAX_IN_FLIGHT = env_int("PLATFORM_MAX_IN_FLIGHT", 256, minimum=1)
PLATFORM_MAX_ROWS = env_int("PLATFORM_MAX_ROWS", 1024, minimum=1)
PLATFORM_MAX_FRAME_BYTES = env_int("PLATFORM_MAX_FRAME_BYTES", 4 * 1024 * 1024, minimum=1024)
# Plain HTTP connections whose first request is under /v2 are served by the
# server's lean HTTP/1.1 path (platform_core/server/lean_http.py); 0 leaves
# every HTTP request to daphne's own.
PLATFORM_LEAN_HTTP = env_bool("PLATFORM_LEAN_HTTP", True)

# Batching defaults; each model may override them in the registry.
PLATFORM_MAX_BATCH_SIZE = env_int("PLATFORM_MAX_BATCH_SIZE", 256, minimum=1)
PLATFORM_MAX_DELAY_MS = float(os.environ.get("PLATFORM_MAX_DELAY_MS", "2"))
PLATFORM_QUEUE_CAPACITY = env_int("PLATFORM_QUEUE_CAPACITY", 4096, minimum=1)
# Calls of a GIL-holding model (scikit-learn) measured shorter than this run on the event loop
# instead of the model's thread (0: never).
PLATFORM_INLINE_CALLS_BELOW_MS = env_float("PLATFORM_INLINE_CALLS_BELOW_MS", 1.0, minimum=0.0)
# scikit-learn models are compiled to ONNX and served by ONNX Runtime when the compiled graph gives
# scikit-learn's own outputs on probe rows (inference/runtimes/onnx_compiled.py); 0 keeps scikit-learn.
PLATFORM_SKLEARN_ONNX = env_bool("PLATFORM_SKLEARN_ONNX", True)
PLATFORM_REQUEST_TIMEOUT_MS = float(os.environ.get("PLATFORM_REQUEST_TIMEOUT_MS", "5000"))

# Load every active model version when the ASGI application is imported.
PLATFORM_PRELOAD_MODELS = env_bool("PLATFORM_PRELOAD_MODELS", True)
# How often each server process compares what it serves with the registry
# (platform_core/modelsync.py), in seconds: the safety net that makes a process
# that missed the channel-layer message of a change (Redis down, or no Redis:
# the in-memory layer spans one process) serve it within this time. One small
# query when nothing changed.
try:
    PLATFORM_MODEL_RECONCILE_S = float(os.environ.get("PLATFORM_MODEL_RECONCILE_S", "5"))
except ValueError:
    PLATFORM_MODEL_RECONCILE_S = float("nan")
if not 0 < PLATFORM_MODEL_RECONCILE_S < float("inf"):
    raise ImproperlyConfigured(
        "PLATFORM_MODEL_RECONCILE_S must be a positive number of seconds, "
        f"not {os.environ.get('PLATFORM_MODEL_RECONCILE_S')!r}."
    )

# The largest model artifact the admin, the commands and the deployment API
# accept; a larger upload is recorded as a failed version (HTTP 413).
PLATFORM_MAX_ARTIFACT_BYTES = env_int("PLATFORM_MAX_ARTIFACT_BYTES", 256 * 1024 * 1024, minimum=1)

# Progressive rollout (docs/rollout.md): the most copies of requests waiting
# for a shadow version per process (past it, copies are dropped and counted,
# never a client's request); how often each process writes its comparisons to
# the database, in seconds; how many disagreeing rows it keeps per model,
# version pair and minute, and per model in all.
PLATFORM_SHADOW_MAX_PENDING = env_int("PLATFORM_SHADOW_MAX_PENDING", 1024, minimum=1)
PLATFORM_SHADOW_FLUSH_S = env_int("PLATFORM_SHADOW_FLUSH_S", 10, minimum=1)
PLATFORM_SHADOW_SAMPLES_PER_MINUTE = env_int("PLATFORM_SHADOW_SAMPLES_PER_MINUTE", 20, minimum=0)
PLATFORM_SHADOW_SAMPLES_KEPT = env_int("PLATFORM_SHADOW_SAMPLES_KEPT", 1000, minimum=0)

# TensorFlow's CPU threads: by default every core this process may run on
# (taskset, cgroups) but the one the event loop needs, and one thread between
# operations (batches already run one at a time).
PLATFORM_TF_INTRA_OP_THREADS = env_int("PLATFORM_TF_INTRA_OP_THREADS", max(1, len(os.sched_getaffinity(0)) - 1),
                                       minimum=1)
PLATFORM_TF_INTER_OP_THREADS = env_int("PLATFORM_TF_INTER_OP_THREADS", 1, minimum=1)

# Move everything loaded at start-up out of the garbage collector's reach
# (platform_core/asgi.py).
PLATFORM_GC_FREEZE = env_bool("PLATFORM_GC_FREEZE", True)

# The prediction log and the Prometheus metrics. Off only to measure what they
# cost (the benchmark does); a production server keeps them on.
PLATFORM_MONITORING = env_bool("PLATFORM_MONITORING", True)

# --- Metrics -----------------------------------------------------------------

# A bearer token that GET /metrics must present when set. Without one the
# endpoint is open, for a Prometheus on the deployment's private network.
PLATFORM_METRICS_TOKEN = os.environ.get("PLATFORM_METRICS_TOKEN", "")

# prometheus_client's multiprocess mode, for several server processes behind
# one /metrics: each process writes its values under this directory and a
# scrape adds them up. prometheus_client reads the variable when it is first
# imported, so it must be in the environment before the process starts
# (monitoring.metrics refuses to run if it was set too late). Empty the
# directory before the first process of a deployment starts.
PROMETHEUS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)

# --- Prediction log ------------------------------------------------------------
#
# One database record per answered request (monitoring.predictionlog), written by a
# background thread in batches so that replies never wait for the database.

# Off only where something else keeps the audit trail, or in test processes
# that must not write from a background thread.
PLATFORM_LOG_ENABLED = env_bool("PLATFORM_LOG_ENABLED", True)
# Records waiting in memory for the database; past this bound the oldest go to
# a spill file on disk (and far past it, twice the bound and at least 10,000
# more, with the disk not keeping up either, new records are dropped and
# counted as lost).
PLATFORM_LOG_BUFFER_RECORDS = env_int("PLATFORM_LOG_BUFFER_RECORDS", 100_000, minimum=10)
# Where the INSERTs run: "process" (a writer process of the server's own, so
# that turning records into statements costs the serving interpreter nothing;
# an in-memory SQLite database falls back to the thread) or "thread".
PLATFORM_LOG_WRITER = os.environ.get("PLATFORM_LOG_WRITER", "process")
# One transaction per batch (multi-row INSERTs of up to 500 rows): this many
# records, or what is waiting every interval. Fewer, larger batches cost the
# writer less per record (docs/benchmarks.md).
PLATFORM_LOG_BATCH_SIZE = env_int("PLATFORM_LOG_BATCH_SIZE", 2000, minimum=1)
PLATFORM_LOG_FLUSH_INTERVAL_MS = env_int("PLATFORM_LOG_FLUSH_INTERVAL_MS", 250, minimum=1)
# How long the writer waits for a locked or slow database before it calls the
# attempt failed and retries with backoff.
PLATFORM_LOG_DB_TIMEOUT_S = float(os.environ.get("PLATFORM_LOG_DB_TIMEOUT_S", "5"))
# Append-only files of records the database could not take yet; replayed into
# the database when it answers again, also by the next process to start.
PLATFORM_LOG_SPILL_DIR = Path(os.environ.get("PLATFORM_LOG_SPILL_DIR", DATA_DIR / "spill")).resolve()
# The journal: every record written to disk before its reply leaves, so that a
# killed server process loses no answered request; recovered at the next start.
# fsync every PLATFORM_LOG_JOURNAL_FSYNC_MS bounds what a machine crash can lose.
PLATFORM_LOG_JOURNAL = env_bool("PLATFORM_LOG_JOURNAL", True)
PLATFORM_LOG_JOURNAL_DIR = Path(os.environ.get("PLATFORM_LOG_JOURNAL_DIR", DATA_DIR / "journal")).resolve()
PLATFORM_LOG_JOURNAL_FSYNC_MS = env_int("PLATFORM_LOG_JOURNAL_FSYNC_MS", 50, minimum=1)
# `manage.py prune_predictions` deletes records older than this many days;
# 0 keeps them forever.
PLATFORM_LOG_RETENTION_DAYS = env_int("PLATFORM_LOG_RETENTION_DAYS", 90, minimum=0)

# --- Dashboard -----------------------------------------------------------------
#
# The live monitoring page (frontend/). Its chart library comes from npm
# (`npm ci --prefix frontend`, run by `make setup`) and is served as static
# files under static/vendor/chartjs/. Without it the page still works and says
# that charts are unavailable, so a missing folder is left out rather than
# reported by every management command.
DASHBOARD_CHART_JS_DIR = BASE_DIR / "frontend" / "node_modules" / "chart.js" / "dist"
STATICFILES_DIRS = [("vendor/chartjs", DASHBOARD_CHART_JS_DIR)] if DASHBOARD_CHART_JS_DIR.is_dir() else []
