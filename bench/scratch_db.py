"""A benchmark's own PostgreSQL database, Django set up on it (DEBUG off), and a worker loop.

Shared by bench/dashboard.py and bench/metrics.py (run as scripts, so bench/ is on the path).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = "postgres://postgres@127.0.0.1:5432"


def setup_django(db_name: str) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["DATABASE_URL"] = f"{SERVER}/{db_name}"
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver"  # the test client's host name
    os.environ.setdefault("DJANGO_SECRET_KEY", "benchmark-only-secret-key-benchmark-only-secret")
    os.environ["DJANGO_SETTINGS_MODULE"] = "portico_site.settings"
    os.environ.pop("PORTICO_METRICS_TOKEN", None)
    import django

    django.setup()


def recreate_database(db_name: str) -> None:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db_name}")


def drop_database(db_name: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def complete_jobs(db_name: str, queues: list[str], batch: int, done, stop, seconds: float | None = None) -> None:
    """A worker process: claim and complete due jobs of ``queues`` until ``stop`` is set
    (or ``seconds`` have passed), adding each completion to the shared counter ``done``."""
    setup_django(db_name)
    from jobs.queue import DatabaseJobQueueAdapter

    adapter = DatabaseJobQueueAdapter()
    deadline = None if seconds is None else time.monotonic() + seconds
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        claims = adapter.dequeue_many_sync(queues, batch)
        if not claims:
            stop.wait(0.05)
            continue
        completed = adapter.acknowledge_many_sync(claims)
        with done.get_lock():
            done.value += len(completed)
