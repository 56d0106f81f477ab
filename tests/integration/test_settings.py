"""Settings come from the environment: each case imports them in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

# Every variable settings.py reads; each case starts with none of them set.
SETTINGS_ENV = (
    "DATABASE_URL",
    "DJANGO_DEBUG",
    "DJANGO_SECRET_KEY",
    "DJANGO_ALLOWED_HOSTS",
    "DJANGO_LOG_LEVEL",
    "DJANGO_SETTINGS_MODULE",
    "CELERY_BROKER_URL",
    "PORTICO_METRICS_TOKEN",
)

DUMP_SETTINGS = """
import json
from portico_site import settings as s
print(json.dumps({
    "BASE_DIR": str(s.BASE_DIR),
    "DEBUG": s.DEBUG,
    "SECRET_KEY": s.SECRET_KEY,
    "ALLOWED_HOSTS": s.ALLOWED_HOSTS,
    "DATABASE": s.DATABASES["default"],
    "CELERY_BROKER_URL": s.CELERY_BROKER_URL,
    "CELERY_TASK_IGNORE_RESULT": s.CELERY_TASK_IGNORE_RESULT,
    "CELERY_RESULT_BACKEND": getattr(s, "CELERY_RESULT_BACKEND", None),
    "PORTICO_METRICS_TOKEN": s.PORTICO_METRICS_TOKEN,
    "LOG_LEVEL": s.LOGGING["root"]["level"],
}, default=str))
"""

# For management commands that open the database: leaves no db.sqlite3 behind.
IN_MEMORY_SQLITE = "sqlite://:memory:"

RunPython = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_python(project_root: Path) -> RunPython:
    """Run Python code or a script in the project root with only the given settings env."""

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
        return subprocess.run(
            [sys.executable, *args],
            cwd=project_root,
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


@pytest.fixture
def load_settings(run_python: RunPython) -> Callable[..., dict[str, Any]]:
    """Import portico_site.settings under the given env and return the values that matter."""

    def load(**env: str) -> dict[str, Any]:
        result = run_python("-c", DUMP_SETTINGS, **env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    return load


def test_missing_database_url_means_a_sqlite_file_in_the_project_folder(
    load_settings: Callable[..., dict[str, Any]], project_root: Path
) -> None:
    settings = load_settings(DJANGO_DEBUG="1")

    database = settings["DATABASE"]
    assert database["ENGINE"] == "django.db.backends.sqlite3"
    assert Path(database["NAME"]) == project_root / "db.sqlite3"
    assert Path(settings["BASE_DIR"]) == project_root


def test_sqlite_waits_for_the_write_lock_instead_of_failing(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    options = load_settings(DJANGO_DEBUG="1")["DATABASE"]["OPTIONS"]

    assert options["transaction_mode"] == "IMMEDIATE"
    assert "PRAGMA journal_mode=WAL" in options["init_command"]
    assert "PRAGMA busy_timeout=5000" in options["init_command"]


def test_a_postgres_database_url_selects_the_postgresql_engine(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    database = load_settings(
        DJANGO_DEBUG="1",
        DATABASE_URL="postgres://portico:s3cret@db.internal:5433/portico_prod",
    )["DATABASE"]

    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert database["NAME"] == "portico_prod"
    assert database["USER"] == "portico"
    assert database["PASSWORD"] == "s3cret"
    assert database["HOST"] == "db.internal"
    assert database["PORT"] == 5433
    assert database["CONN_MAX_AGE"] == 60
    assert database["CONN_HEALTH_CHECKS"] is True


def test_debug_off_without_a_secret_key_refuses_to_start(run_python: RunPython) -> None:
    result = run_python("-c", DUMP_SETTINGS)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_debug_off_with_a_secret_key_uses_that_key(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    settings = load_settings(DJANGO_SECRET_KEY="a-real-secret")

    assert settings["DEBUG"] is False
    assert settings["SECRET_KEY"] == "a-real-secret"


def test_debug_without_a_secret_key_uses_a_key_named_insecure(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    key = load_settings(DJANGO_DEBUG="1")["SECRET_KEY"]

    assert key.startswith("django-insecure-")


@pytest.mark.parametrize("value", ["1", "true", "True", "yes", "ON"])
def test_debug_is_on_for_truthy_words(
    load_settings: Callable[..., dict[str, Any]], value: str
) -> None:
    assert load_settings(DJANGO_DEBUG=value)["DEBUG"] is True


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "enabled"])
def test_debug_is_off_for_anything_else(
    load_settings: Callable[..., dict[str, Any]], value: str
) -> None:
    settings = load_settings(DJANGO_DEBUG=value, DJANGO_SECRET_KEY="k")

    assert settings["DEBUG"] is False


def test_allowed_hosts_are_a_comma_separated_list_with_blanks_dropped(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    settings = load_settings(
        DJANGO_SECRET_KEY="k", DJANGO_ALLOWED_HOSTS=" jobs.example.com, .internal ,,"
    )

    assert settings["ALLOWED_HOSTS"] == ["jobs.example.com", ".internal"]


def test_allowed_hosts_default_to_localhost_in_debug(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    hosts = load_settings(DJANGO_DEBUG="1")["ALLOWED_HOSTS"]

    assert hosts == ["localhost", "127.0.0.1", "[::1]"]


def test_allowed_hosts_default_to_none_without_debug(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    assert load_settings(DJANGO_SECRET_KEY="k")["ALLOWED_HOSTS"] == []


def test_celery_defaults_to_local_redis_and_keeps_no_results(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    settings = load_settings(DJANGO_DEBUG="1")

    assert settings["CELERY_BROKER_URL"] == "redis://127.0.0.1:6379/0"
    assert settings["CELERY_TASK_IGNORE_RESULT"] is True
    assert settings["CELERY_RESULT_BACKEND"] is None


def test_the_celery_app_takes_its_broker_from_the_django_settings(
    run_python: RunPython,
) -> None:
    code = "from portico_site.celery import app; print(app.conf.broker_url)"

    result = run_python(
        "-c", code, DJANGO_DEBUG="1", CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "amqp://guest:guest@127.0.0.1:5672//"


def test_metrics_token_is_none_when_unset(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    assert load_settings(DJANGO_DEBUG="1")["PORTICO_METRICS_TOKEN"] is None


def test_metrics_token_is_read_from_the_environment(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    settings = load_settings(DJANGO_DEBUG="1", PORTICO_METRICS_TOKEN="scrape-me")

    assert settings["PORTICO_METRICS_TOKEN"] == "scrape-me"


def test_log_level_comes_from_the_environment(
    load_settings: Callable[..., dict[str, Any]],
) -> None:
    assert load_settings(DJANGO_DEBUG="1")["LOG_LEVEL"] == "INFO"
    assert load_settings(DJANGO_DEBUG="1", DJANGO_LOG_LEVEL="debug")["LOG_LEVEL"] == "DEBUG"


def test_manage_py_check_passes(run_python: RunPython) -> None:
    result = run_python(
        "manage.py", "check", "--fail-level", "WARNING",
        DJANGO_DEBUG="1", DATABASE_URL=IN_MEMORY_SQLITE,
    )

    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_manage_py_finds_no_missing_migrations(run_python: RunPython) -> None:
    result = run_python(
        "manage.py", "makemigrations", "--check", "--dry-run",
        DJANGO_DEBUG="1", DATABASE_URL=IN_MEMORY_SQLITE,
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.django_db
def test_login_page_renders_a_form_with_a_csrf_token(client: Client) -> None:
    response = client.get("/accounts/login/")

    assert response.status_code == 200
    body = response.content.decode()
    assert 'name="csrfmiddlewaretoken"' in body
    assert 'name="username"' in body
    assert 'name="password"' in body
    assert "/static/portico/portico.css" in body


@pytest.mark.django_db
def test_a_wrong_password_shows_an_error_on_the_login_page(client: Client) -> None:
    response = client.post(
        "/accounts/login/", {"username": "nobody", "password": "wrong"}
    )

    assert response.status_code == 200
    assert 'role="alert"' in response.content.decode()


@pytest.mark.django_db
def test_signing_in_leads_to_the_dashboard_overview(client: Client, django_user_model: Any) -> None:
    django_user_model.objects.create_user(username="ops", password="a-long-passphrase")

    response = client.post(
        "/accounts/login/", {"username": "ops", "password": "a-long-passphrase"}
    )

    assert response.status_code == 302
    assert response["Location"] == "/"


@pytest.mark.django_db
def test_admin_sends_anonymous_visitors_to_its_login(client: Client) -> None:
    response = client.get("/admin/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_login_stylesheet_is_a_local_static_file() -> None:
    assert finders.find("portico/portico.css") is not None


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_database_tests_run_on_postgresql() -> None:
    from django.db import connection

    assert connection.vendor == "postgresql", (
        "integration tests need DATABASE_URL to point at PostgreSQL; run them with `make test`"
    )
