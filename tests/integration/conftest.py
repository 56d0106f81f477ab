"""Integration tests run against a real PostgreSQL server; without one they fail, never skip."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

DEFAULT_TEST_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/portico_test"
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def require_postgres() -> str:
    """Return the URL of the test PostgreSQL database, creating the database if missing.

    The server comes from PORTICO_TEST_DATABASE_URL (default: the local server,
    database portico_test). Fails the run, naming the command that starts the
    server, when it cannot be reached.
    """
    url = os.environ.get("PORTICO_TEST_DATABASE_URL") or DEFAULT_TEST_DATABASE_URL
    parts = urlsplit(url)
    dbname = parts.path.lstrip("/") or "postgres"
    # The maintenance database exists on every server, so this proves reachability
    # without depending on the test database being there yet.
    maintenance_url = urlunsplit(parts._replace(path="/postgres"))
    try:
        with psycopg.connect(maintenance_url, connect_timeout=5, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    except psycopg.OperationalError as exc:
        error = str(exc).strip()
    else:
        return url
    # Failed outside the except block so the report is this message, not a traceback chain.
    pytest.fail(
        f"PostgreSQL is not reachable at {_without_password(url)}: {error}\n"
        f"Start it with: {START_POSTGRES}",
        pytrace=False,
    )


@pytest.fixture(scope="session", autouse=True)
def postgres_url() -> str:
    """The test PostgreSQL URL; checked once per run before any integration test."""
    return require_postgres()


@pytest.fixture
def store(empty_store):
    """The database adapter over an empty job store, polling quickly for the tests that wait."""
    from jobs.queue import DatabaseJobQueueAdapter

    adapter = DatabaseJobQueueAdapter(poll_interval=0.05)
    yield adapter
    adapter.close_sync()


@pytest.fixture
def job():
    """Build a Job: queue "default", type "test.job", an empty payload, unless told otherwise."""
    from uuid import uuid4

    from portico.ports.job import Job

    def build(**fields) -> Job:
        values = {"id": uuid4(), "queue_name": "default", "job_type": "test.job", "payload": {}}
        values.update(fields)
        return Job(**values)

    return build
