"""Fixtures shared by every test suite: the project's own layout, nothing more."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository root: the folder holding manage.py."""
    return PROJECT_ROOT


def empty_job_store() -> None:
    """Empty the job tables, counters last (deleting jobs appends counter rows on SQLite)."""
    from django.db import connection

    with connection.cursor() as cursor:
        for table in ("portico_job_attempt", "portico_job", "portico_queue_counter", "portico_worker"):
            cursor.execute(f"DELETE FROM {table}")


@pytest.fixture
def empty_store(transactional_db) -> None:
    """A real database whose job store starts empty (a flush after the last test may not)."""
    empty_job_store()
