"""The queue adapters the contract suite runs against, and helpers to drive them."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from portico.adapters.job_queue.memory_queue import MemoryJobQueueAdapter
from tests.conftest import empty_job_store
from portico.ports.job import Job
from portico.ports.job_queue import JobQueueAdapter


def build_memory(**options: Any) -> JobQueueAdapter:
    return MemoryJobQueueAdapter(**options)


def build_database(**options: Any) -> JobQueueAdapter:
    from jobs.queue import DatabaseJobQueueAdapter

    return DatabaseJobQueueAdapter(**options)


def _database_kind() -> str:
    """The engine the Django test database runs on: PostgreSQL, or SQLite for the embedded default."""
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"]
    return "postgresql" if "postgresql" in engine else "sqlite"


# name -> builder; the database adapter runs on whichever engine the test run uses.
ADAPTERS: dict[str, Callable[..., JobQueueAdapter]] = {"memory": build_memory}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "adapter_kind" in metafunc.fixturenames:
        database = _database_kind()
        metafunc.parametrize("adapter_kind", [
            *[pytest.param(kind, id=kind) for kind in ADAPTERS],
            pytest.param(database, id=database, marks=pytest.mark.django_db(transaction=True)),
        ])


@pytest.fixture
def make_queue(adapter_kind: str, request: pytest.FixtureRequest):
    """Build fresh, empty adapters of the kind under test (options: lease_seconds, ...).

    Database adapters get a real database, emptied after the test, and are closed after
    it so no connection outlives it.
    """
    if adapter_kind in ADAPTERS:
        yield ADAPTERS[adapter_kind]
        return
    request.getfixturevalue("empty_store")
    built: list[JobQueueAdapter] = []

    def build(**options: Any) -> JobQueueAdapter:
        options.setdefault("poll_interval", 0.05)
        adapter = build_database(**options)
        built.append(adapter)
        return adapter

    build.check_store = check_database_store  # type: ignore[attr-defined]
    build.reset = empty_job_store  # type: ignore[attr-defined]
    build.stateful_examples = 25  # type: ignore[attr-defined]
    yield build
    for adapter in built:
        adapter.close_sync()


def check_database_store(adapter: JobQueueAdapter) -> None:
    """The maintained counters agree with a recount of the rows (what portico_reconcile checks)."""
    assert adapter.counter_drift_sync() == {}


@pytest.fixture
async def queue(make_queue: Callable[..., JobQueueAdapter]):
    adapter = make_queue()
    await adapter.initialize()
    yield adapter
    await adapter.close()


@pytest.fixture
def new_job() -> Callable[..., Job]:
    def build(**fields: Any) -> Job:
        values: dict[str, Any] = {
            "id": uuid4(),
            "queue_name": "default",
            "job_type": "test.job",
            "payload": {"n": 1},
        }
        values.update(fields)
        return Job(**values)

    return build


@pytest.fixture
def eventually() -> Callable[..., Any]:
    """Await a condition (a callable, sync or async) instead of sleeping a fixed time."""
    return _eventually


async def _eventually(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def utcnow() -> datetime:
    return datetime.now(UTC)
