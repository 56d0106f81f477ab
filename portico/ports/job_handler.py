"""The handler port: the business logic that runs one type of job."""
from __future__ import annotations

from abc import ABC, abstractmethod

from portico.ports.job import Job, JobResult


class JobHandler(ABC):
    """Runs jobs of one ``job_type``.

    ``handle`` returns a JobResult; raising counts as a failed result. A failed result
    whose ``result_data["retry_recommended"]`` is False is not retried.
    """

    @property
    @abstractmethod
    def job_type(self) -> str:
        """The job type this handler runs, e.g. "email.send"."""

    @abstractmethod
    async def handle(self, job: Job) -> JobResult:
        """Run the job."""

    async def on_failure(self, job: Job, error: Exception) -> None:
        """Called after every failed run, before the retry decision is recorded."""
