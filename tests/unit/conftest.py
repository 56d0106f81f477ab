"""Helpers for the unit suite: the pure-Python core only, no Django anywhere."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005) -> Any:
    """Wait until predicate() (sync or async) is truthy and return its value.

    Polls instead of sleeping a fixed time, so a test waits only as long as it must and
    fails with a clear message instead of hanging.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate!r}")
        await asyncio.sleep(interval)


@pytest.fixture(name="eventually")
def eventually_fixture() -> Callable[..., Any]:
    """The ``eventually`` helper, for tests (conftest modules are not importable by name)."""
    return eventually
