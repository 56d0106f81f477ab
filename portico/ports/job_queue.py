"""The queue port: how jobs are stored, claimed, finished and inspected."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from portico.ports.job import Job, JobAttempt, JobStatus, QueueStats


class JobQueueAdapter(ABC):
    """A store of jobs that workers claim from.

    Claims are leases: a RUNNING job belongs to the worker that dequeued it until the
    lease runs out. Callers that hold a claim pass it back (``claim=job``) when they
    finish, so an outcome reported by a worker whose job was meanwhile rescued is refused
    with StaleClaimError instead of being recorded twice.
    """

    async def initialize(self) -> None:
        """Prepare the adapter for use."""

    async def close(self) -> None:
        """Release what the adapter holds."""

    @abstractmethod
    async def enqueue(self, job: Job) -> Job:
        """Validate and store a new job; it becomes PENDING, or SCHEDULED if it has a time."""

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[Job]:
        """Store several jobs at once: all of them, or none if any is invalid."""
        return [await self.enqueue(job) for job in jobs]

    @abstractmethod
    async def dequeue(self, queue_name: str | Sequence[str], timeout: float = 30) -> Job | None:
        """Claim the next due job, highest priority first, then oldest.

        Several queue names may be given: the best due job across them is claimed.
        Waits up to ``timeout`` seconds for one, then returns None. Cancelling the wait
        never leaves a job claimed.
        """

    async def dequeue_many(self, queue_name: str | Sequence[str], limit: int) -> list[Job]:
        """Claim up to ``limit`` due jobs at once, without waiting."""
        claimed: list[Job] = []
        while len(claimed) < limit:
            job = await self.dequeue(queue_name, timeout=0)
            if job is None:
                break
            claimed.append(job)
        return claimed

    @abstractmethod
    async def acknowledge(
        self, job_id: UUID, result_data: dict[str, Any] | None = None, *, claim: Job | None = None
    ) -> Job:
        """Mark a RUNNING job COMPLETED and keep its result data."""

    @abstractmethod
    async def reject(
        self,
        job_id: UUID,
        requeue: bool = True,
        error_message: str | None = None,
        *,
        delay: float | None = None,
        claim: Job | None = None,
    ) -> Job:
        """Record a failure: retry (after ``delay`` seconds), dead-letter, or fail for good."""

    @abstractmethod
    async def release(self, job_id: UUID, *, claim: Job | None = None) -> Job:
        """Give a RUNNING job back unrun (a worker shutting down); it is not counted as a retry."""

    @abstractmethod
    async def heartbeat(self, claims: Sequence[Job]) -> list[UUID]:
        """Extend the leases of these claims; return the ids whose claim is still held."""

    @abstractmethod
    async def rescue(self) -> list[UUID]:
        """Reject, with requeue, every RUNNING job whose lease ran out (its worker is gone)."""

    @abstractmethod
    async def get_job(self, job_id: UUID) -> Job | None:
        """The job with this id, or None."""

    @abstractmethod
    async def get_result(self, job_id: UUID) -> dict[str, Any] | None:
        """The result data a completed job was acknowledged with, or None."""

    @abstractmethod
    async def get_job_attempts(self, job_id: UUID) -> list[JobAttempt]:
        """Every run of the job so far, oldest first."""

    @abstractmethod
    async def list_jobs_by_status(self, status: JobStatus, limit: int | None = None) -> list[Job]:
        """Jobs in this status, oldest first."""

    @abstractmethod
    async def list_jobs_by_type(self, job_type: str, limit: int | None = None) -> list[Job]:
        """Jobs of this type, oldest first."""

    @abstractmethod
    async def get_queue_stats(self, queue_name: str) -> QueueStats:
        """Counts, latency and lifetime totals of one queue."""

    @abstractmethod
    async def get_all_queue_stats(self) -> list[QueueStats]:
        """QueueStats of every queue that has ever held a job, by name."""

    @abstractmethod
    async def cancel_job(self, job_id: UUID) -> bool:
        """Fail a job that is not yet running with "Job cancelled"; False if it cannot be."""

    @abstractmethod
    async def requeue_job(self, job_id: UUID) -> Job:
        """Send a DEAD_LETTER or FAILED job back to PENDING with its retry count reset."""


@runtime_checkable
class SyncJobQueue(Protocol):
    """The port's named extension for synchronous callers: the same operations, blocking.

    What code without an event loop calls (web views, the webhook, the scheduler, Celery
    tasks, management commands): each method does what its async twin on JobQueueAdapter
    does. The database adapter offers it; the memory adapter, used from async code, need not.
    """

    def enqueue_sync(self, job: Job) -> Job: ...

    def enqueue_many_sync(self, jobs: Sequence[Job]) -> list[Job]: ...

    def get_job_sync(self, job_id: UUID) -> Job | None: ...

    def get_job_attempts_sync(self, job_id: UUID) -> list[JobAttempt]: ...

    def get_queue_stats_sync(self, queue_name: str) -> QueueStats: ...

    def get_all_queue_stats_sync(self) -> list[QueueStats]: ...

    def cancel_job_sync(self, job_id: UUID) -> bool: ...

    def requeue_job_sync(self, job_id: UUID) -> Job: ...

    def release_sync(self, job_id: UUID, *, claim: Job | None = None) -> Job: ...

    def heartbeat_sync(self, claims: Sequence[Job]) -> list[UUID]: ...

    def rescue_sync(self, batch: int = 1000) -> list[UUID]:
        """Upkeep: what JobQueueAdapter.rescue does."""
        ...

    def prune_sync(self, older_than: timedelta | None = None, batch: int = 5000) -> int:
        """Upkeep: delete completed jobs finished before ``older_than`` ago; return how many."""
        ...

    def compact_counters_sync(self) -> None:
        """Upkeep: fold the maintained counts' delta rows together (reads never need it)."""
        ...

    def live_workers_sync(self) -> dict[str, int]:
        """queue -> worker processes heard from within a lease that serve it."""
        ...

    def due_queue_names_sync(self) -> list[str]:
        """The queues holding at least one waiting job that is due now."""
        ...
