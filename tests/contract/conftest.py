"""The queue adapters the contract suite runs against, and helpers to drive them."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from portico.adapters.job_queue.memory_queue import MemoryJobQueueAdapter
from portico.ports.job import Job
from portico.ports.job_queue import JobQueueAdapter


def build_memory(**options: Any) -> JobQueueAdapter:
    return MemoryJobQueueAdapter(**options)


# name -> (builder, marks). The database adapter registers itself here from its own
# conftest so this suite stays free of Django.
ADAPTERS: dict[str, tuple[Callable[..., JobQueueAdapter], tuple[Any, ...]]] = {
    "memory": (build_memory, ()),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "adapter_kind" in metafunc.fixturenames:
        metafunc.parametrize(
            "adapter_kind",
            [pytest.param(name, marks=list(marks), id=name) for name, (_, marks) in ADAPTERS.items()],
        )


@pytest.fixture
def make_queue(adapter_kind: str, request: pytest.FixtureRequest) -> Callable[..., JobQueueAdapter]:
    """Build a fresh, empty adapter of the kind under test (options: lease_seconds, ...)."""
    builder, _ = ADAPTERS[adapter_kind]
    prepare = getattr(builder, "prepare", None)
    if prepare is not None:
        prepare(request)
    return builder


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
