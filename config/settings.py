"""Django settings, every one read from the environment (see the README's settings table)."""

from __future__ import annotations

import sys
from pathlib import Path

import dj_database_url

from config.env import env, envbool, envfloat, envint, envlist

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

INSTALLED_APPS = [
    "daphne",
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
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
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

# --- Auth ------------------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

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
# The upstream client's connection pool: "aiohttp" (fast) or "httpcore" (httpx's own).
GATEWAY_HTTP_TRANSPORT = env("GATEWAY_HTTP_TRANSPORT", "aiohttp")
# Circuit breaker per deployment: open after this many consecutive failures, probe after the cooldown.
GATEWAY_CIRCUIT_FAILURES = envint("GATEWAY_CIRCUIT_FAILURES", 5)
GATEWAY_CIRCUIT_COOLDOWN = envfloat("GATEWAY_CIRCUIT_COOLDOWN", 30.0)
# An upstream 429's Retry-After keeps its deployment out of rotation for at most this long.
GATEWAY_MAX_RETRY_AFTER = envfloat("GATEWAY_MAX_RETRY_AFTER", 60.0)
# Usage buffer: events are flushed to the ledger in batches of at most this many, this often.
USAGE_FLUSH_INTERVAL = envfloat("USAGE_FLUSH_INTERVAL", 1.0)
USAGE_FLUSH_BATCH = envint("USAGE_FLUSH_BATCH", 500)

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

# --- Logging ---------------------------------------------------------------------------------------
LOG_LEVEL = env("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "stream": sys.stderr}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- Server ----------------------------------------------------------------------------------------
# `make run` / `manage.py serve`: uvicorn (measured faster, see README) or daphne.
ASGI_SERVER = env("ASGI_SERVER", "uvicorn")
WEB_CONCURRENCY = envint("WEB_CONCURRENCY", 1)
# `manage.py serve` also starts a Celery worker unless this is off (production runs it separately).
SERVE_WITH_WORKER = envbool("SERVE_WITH_WORKER", True)
HEALTHZ_TIMEOUT = envfloat("HEALTHZ_TIMEOUT", 2.0)
