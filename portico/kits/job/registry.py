"""Handlers by job type: what the service accepts and the workers run."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from portico.ports.job_handler import JobHandler

Handlers = Mapping[str, JobHandler] | Iterable[JobHandler]


def handlers_by_type(handlers: Handlers | None) -> dict[str, JobHandler]:
    if handlers is None:
        return {}
    if isinstance(handlers, Mapping):
        return dict(handlers)
    by_type: dict[str, JobHandler] = {}
    for handler in handlers:
        if handler.job_type in by_type:
            raise ValueError(f"two handlers are registered for job type {handler.job_type!r}")
        by_type[handler.job_type] = handler
    return by_type
