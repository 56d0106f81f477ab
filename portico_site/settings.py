"""Django settings for Portico Jobs; the only module that reads environment variables."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUTHY = frozenset({"1", "true", "yes", "on"})


def _env_flag(name: str) -> bool:
    """Return True when the variable is set to 1/true/yes/on (any case); off otherwise."""
    return os.environ.get(name, "").strip().lower() in _TRUTHY


def _env_list(name: str) -> list[str] | None:
    """Split a comma-separated variable, dropping blanks; None when the variable is unset."""
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = _env_flag("DJANGO_DEBUG")

# Never fall back to a known key outside DEBUG: a guessable key forges sessions
# and password-reset tokens.
_INSECURE_DEV_SECRET_KEY = "django-insecure-portico-dev-key-do-not-use-in-production"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "").strip()
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set DJANGO_SECRET_KEY to a long random "
            "string, or set DJANGO_DEBUG=1 for local development."
        )
    SECRET_KEY = _INSECURE_DEV_SECRET_KEY

_allowed_hosts = _env_list("DJANGO_ALLOWED_HOSTS")
if _allowed_hosts is None:
    _allowed_hosts = ["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
ALLOWED_HOSTS = _allowed_hosts


INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "jobs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "jobs.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "portico_site.urls"

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

WSGI_APPLICATION = "portico_site.wsgi.application"
ASGI_APPLICATION = "portico_site.asgi.application"


# Absent DATABASE_URL means the embedded default: one SQLite file, db.sqlite3 beside
# manage.py unless PORTICO_SQLITE_PATH names another (the run script's test uses its own).
_sqlite_path = Path(os.environ.get("PORTICO_SQLITE_PATH") or BASE_DIR / "db.sqlite3").resolve()
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{_sqlite_path}",
        conn_max_age=60,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Persistent connections buy nothing for a local file.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # WAL lets readers run beside the writer; IMMEDIATE takes the write lock at
    # BEGIN so concurrent writers queue on busy_timeout instead of failing with
    # "database is locked" when a read transaction tries to upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": (
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;"
        ),
        "transaction_mode": "IMMEDIATE",
    }
    # Tests get a file too: an in-memory database locks whole tables instead of waiting.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test_db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "/accounts/login/"
# Every dashboard page needs a login; after it, the overview.
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"


LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True


STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"


SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True


CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/0"
# Job state lives in the job store; a result backend would be a second, stale copy.
CELERY_TASK_IGNORE_RESULT = True
# Stated explicitly: left unset, Celery 5 warns at every worker start.
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A Celery message is only a doorbell naming a queue; the job row is the truth (see
# jobs/dispatch.py). Acknowledged once its task has run, handed back if the worker process
# died, and taken one at a time, so a busy process holds no doorbell an idle one could answer.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Doorbells of queue X go to the Celery queue portico.X; sweep, rescue, prune and counter
# compaction go to portico.maintenance.
CELERY_TASK_ROUTES = ("jobs.dispatch.route",)
# PORTICO_DISPATCH=celery rings a doorbell after each enqueue commits (where Celery workers
# run the jobs). Unset, nothing is sent: the built-in worker needs nothing, and under Celery
# beat's sweep still starts the jobs, only later.
_DISPATCHERS = {"": None, "celery": "jobs.dispatch.ring"}
_dispatch = os.environ.get("PORTICO_DISPATCH", "").strip().lower()
if _dispatch not in _DISPATCHERS:
    raise ImproperlyConfigured(f"PORTICO_DISPATCH must be 'celery' or unset, not {_dispatch!r}")
PORTICO_DISPATCH = _DISPATCHERS[_dispatch]


# PORTICO_DEMO=1 (scripts/run.sh sets it) registers the handlers of the demo jobs that
# manage.py portico_demo creates, so the built-in worker runs them (jobs/demo.py).
if _env_flag("PORTICO_DEMO"):
    PORTICO_HANDLERS = [
        "jobs.demo.ResizeImage",
        "jobs.demo.SendEmail",
        "jobs.demo.GenerateReport",
        "jobs.demo.ChargePayment",
        "jobs.demo.DeliverWebhook",
    ]


# Absent token: /metrics is open (for a scraper on a private network).
PORTICO_METRICS_TOKEN = os.environ.get("PORTICO_METRICS_TOKEN") or None
# Absent token: POST /webhooks/jobs refuses every request (401).
PORTICO_WEBHOOK_TOKEN = os.environ.get("PORTICO_WEBHOOK_TOKEN", "").strip() or None


_LOG_LEVEL = os.environ.get("DJANGO_LOG_LEVEL", "").strip().upper() or "INFO"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": _LOG_LEVEL},
    "loggers": {
        # Replaces Django's default "django" handlers, which would print each
        # record a second time through the root handler in DEBUG.
        "django": {"handlers": ["console"], "level": _LOG_LEVEL, "propagate": False},
    },
}
