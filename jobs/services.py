"""The core operations, wired to the database: what views, admin, tasks and commands call."""
from __future__ import annotations

from jobs.conf import setting
from jobs.queue import DatabaseJobQueueAdapter
from jobs.registry import get_handlers
from portico.kits.job import JobService, RetryPolicy


def job_queue() -> DatabaseJobQueueAdapter:
    return DatabaseJobQueueAdapter()


def job_service(queue: DatabaseJobQueueAdapter | None = None) -> JobService:
    return JobService(queue or job_queue(), handlers=get_handlers())


def retry_policy() -> RetryPolicy:
    return RetryPolicy(base=float(setting("PORTICO_RETRY_BASE")), cap=float(setting("PORTICO_RETRY_CAP")))
