"""The creator port: how application code asks for work to be done."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from portico.ports.job import DEFAULT_PRIORITY, DEFAULT_QUEUE, Job


class JobCreator(ABC):
    @abstractmethod
    async def create_job(
        self,
        job_type: str,
        payload: dict[str, Any],
        queue_name: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        **kwargs: Any,
    ) -> Job:
        """Create and store a job; kwargs: scheduled_at, max_retries, created_by, metadata.

        Raises ValueError for an unregistered job type or a payload that is not JSON.
        """
