"""JobService: the JobCreator application code uses, and the operations the ops tools share."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID, uuid4

from portico.exceptions import UnknownJobTypeError
from portico.kits.job.registry import Handlers, handlers_by_type
from portico.ports.job import DEFAULT_PRIORITY, DEFAULT_QUEUE, Job, QueueStats
from portico.ports.job_creator import JobCreator
from portico.ports.job_queue import JobQueueAdapter

_OPTIONS = frozenset({"scheduled_at", "max_retries", "created_by", "metadata"})


class JobService(JobCreator):
    """Creates jobs of the registered types and stores them through the queue adapter."""

    def __init__(
        self,
        job_queue: JobQueueAdapter,
        handlers: Handlers | None = None,
        *,
        job_types: Iterable[str] = (),
    ) -> None:
        self.job_queue = job_queue
        self.job_types = frozenset(handlers_by_type(handlers)) | frozenset(job_types)

    def build_job(
        self,
        job_type: str,
        payload: dict[str, Any],
        queue_name: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        **kwargs: Any,
    ) -> Job:
        """The Job create_job would store, checked for a known type; nothing is stored."""
        unknown = set(kwargs) - _OPTIONS
        if unknown:
            raise TypeError(f"create_job() got unexpected options: {', '.join(sorted(unknown))}")
        if job_type not in self.job_types:
            known = ", ".join(sorted(self.job_types)) or "none"
            raise UnknownJobTypeError(
                f"no handler is registered for job type {job_type!r} (registered: {known})"
            )
        if kwargs.get("metadata") is None:
            kwargs.pop("metadata", None)
        return Job(
            id=uuid4(),
            queue_name=queue_name,
            job_type=job_type,
            payload=payload,
            priority=priority,
            **kwargs,
        )

    async def create_job(
        self,
        job_type: str,
        payload: dict[str, Any],
        queue_name: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        **kwargs: Any,
    ) -> Job:
        job = self.build_job(job_type, payload, queue_name, priority, **kwargs)
        return await self.job_queue.enqueue(job)

    async def get_job(self, job_id: UUID) -> Job | None:
        return await self.job_queue.get_job(job_id)

    async def cancel_job(self, job_id: UUID) -> bool:
        return await self.job_queue.cancel_job(job_id)

    async def requeue_job(self, job_id: UUID) -> Job:
        return await self.job_queue.requeue_job(job_id)

    async def get_queue_stats(self, queue_name: str = DEFAULT_QUEUE) -> QueueStats:
        return await self.job_queue.get_queue_stats(queue_name)
