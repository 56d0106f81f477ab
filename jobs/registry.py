"""Which handler runs each job type: from PORTICO_HANDLERS and the @job_handler decorator.

A handler is a JobHandler (async), or any callable taking the Job: plain functions run on a
worker thread with Django's database connections looked after, and may return a JobResult,
a dict of result data, or None; raising counts as a failed run.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.utils.module_loading import import_string

from jobs.conf import setting
from portico.ports.job import Job, JobResult
from portico.ports.job_handler import JobHandler

_decorated: dict[str, JobHandler] = {}


class CallableHandler(JobHandler):
    """Adapts a plain function (sync or async) to the JobHandler port."""

    def __init__(self, job_type: str, function: Callable[[Job], Any],
                 on_failure: Callable[[Job, Exception], Any] | None = None) -> None:
        self._job_type = job_type
        self.function = function
        self._on_failure = on_failure
        self._is_async = inspect.iscoroutinefunction(function)

    @property
    def job_type(self) -> str:
        return self._job_type

    async def handle(self, job: Job) -> JobResult:
        if self._is_async:
            value = await self.function(job)
        else:
            value = await sync_to_async(_with_fresh_connections(self.function), thread_sensitive=False)(job)
        return as_result(value)

    async def on_failure(self, job: Job, error: Exception) -> None:
        if self._on_failure is None:
            return
        if inspect.iscoroutinefunction(self._on_failure):
            await self._on_failure(job, error)
        else:
            await sync_to_async(_with_fresh_connections(self._on_failure), thread_sensitive=False)(job, error)

    def __repr__(self) -> str:
        return f"<CallableHandler {self.job_type} -> {self.function.__module__}.{self.function.__qualname__}>"


def _with_fresh_connections(function: Callable[..., Any]) -> Callable[..., Any]:
    """Run function with usable connections, and give up broken or old ones afterwards."""

    def run(*args: Any) -> Any:
        close_old_connections()
        try:
            return function(*args)
        finally:
            close_old_connections()

    return run


def as_result(value: Any) -> JobResult:
    if isinstance(value, JobResult):
        return value
    if value is None:
        return JobResult(success=True)
    if isinstance(value, dict):
        return JobResult(success=True, result_data=value)
    raise TypeError(f"a handler returned {type(value).__name__}; return a JobResult, a dict or None")


def job_handler(job_type: str, *, on_failure: Callable[[Job, Exception], Any] | None = None):
    """Register a function (sync or async) as the handler of ``job_type``."""

    def register(function: Callable[[Job], Any]) -> Callable[[Job], Any]:
        if job_type in _decorated:
            raise ValueError(f"job type {job_type!r} already has a handler: {_decorated[job_type]!r}")
        _decorated[job_type] = CallableHandler(job_type, function, on_failure)
        function.portico_handler = _decorated[job_type]  # type: ignore[attr-defined]
        return function

    return register


def _as_handler(target: Any, path: str) -> JobHandler:
    if isinstance(target, JobHandler):
        return target
    if inspect.isclass(target) and issubclass(target, JobHandler):
        return target()
    handler = getattr(target, "portico_handler", None)
    if isinstance(handler, JobHandler):
        return handler
    raise TypeError(
        f"PORTICO_HANDLERS entry {path!r} is a {type(target).__name__}; give a JobHandler "
        "class or instance, or a function decorated with @job_handler"
    )


def get_handlers() -> dict[str, JobHandler]:
    """Every registered handler by job type: PORTICO_HANDLERS first, then decorated functions."""
    handlers: dict[str, JobHandler] = {}
    for path in setting("PORTICO_HANDLERS"):
        handler = _as_handler(import_string(path), path)
        if handler.job_type in handlers:
            raise ValueError(f"two handlers are registered for job type {handler.job_type!r}")
        handlers[handler.job_type] = handler
    for job_type, handler in _decorated.items():
        handlers.setdefault(job_type, handler)
    return handlers
