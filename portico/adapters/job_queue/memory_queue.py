"""The in-memory queue adapter: the reference implementation of the queue port, and the test double."""
from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from portico import lifecycle
from portico.exceptions import DuplicateJobError, JobNotFoundError
from portico.ports.job import WAITING_STATUSES, Job, JobAttempt, JobStatus, QueueStats
from portico.ports.job_queue import JobQueueAdapter
from portico.validation import DEFAULT_MAX_PAYLOAD_BYTES, check_json, check_job, clean_text


def queue_names(queue_name: str | Sequence[str]) -> tuple[str, ...]:
    names = (queue_name,) if isinstance(queue_name, str) else tuple(queue_name)
    if not names:
        raise ValueError("at least one queue name is needed")
    return names


class MemoryJobQueueAdapter(JobQueueAdapter):
    """Keeps jobs in a dict guarded by a lock.

    Safe to share between threads and event loops: a waiting ``dequeue`` is woken through
    its own loop's ``call_soon_threadsafe``, so ``asyncio.run`` called repeatedly and
    asgiref's ``async_to_sync`` both work.
    """

    def __init__(
        self,
        *,
        lease_seconds: float = 300.0,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.lease_seconds = lease_seconds
        self.max_payload_bytes = max_payload_bytes
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._jobs: dict[UUID, Job] = {}
        self._order: dict[UUID, int] = {}
        self._sequence = itertools.count()
        self._leases: dict[UUID, datetime] = {}
        self._results: dict[UUID, dict[str, Any]] = {}
        self._attempts: dict[UUID, list[JobAttempt]] = defaultdict(list)
        self._totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._waiters: dict[asyncio.Future[None], asyncio.AbstractEventLoop] = {}

    # -- writing -------------------------------------------------------------------------

    async def enqueue(self, job: Job) -> Job:
        return (await self.enqueue_many([job]))[0]

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[Job]:
        encoded = [check_job(job, self.max_payload_bytes) for job in jobs]
        with self._lock:
            seen: set[UUID] = set()
            for job in jobs:
                if job.id in self._jobs or job.id in seen:
                    raise DuplicateJobError(f"a job with id {job.id} already exists")
                seen.add(job.id)
            now = self._clock()
            stored = []
            for job, (payload, metadata) in zip(jobs, encoded, strict=True):
                new = replace(
                    job,
                    # A copy through JSON: what is stored is what a database would give back.
                    payload=json.loads(payload),
                    metadata=json.loads(metadata),
                    created_at=now,
                    status=JobStatus.SCHEDULED if job.scheduled_at else JobStatus.PENDING,
                    scheduled_at=job.scheduled_at.astimezone(UTC) if job.scheduled_at else None,
                    started_at=None,
                    completed_at=None,
                    failed_at=None,
                    error_message=None,
                )
                self._jobs[new.id] = new
                self._order[new.id] = next(self._sequence)
                self._totals[new.queue_name]["enqueued"] += 1
                stored.append(new)
            self._wake_waiters()
        return stored

    async def dequeue(self, queue_name: str | Sequence[str], timeout: float = 30) -> Job | None:
        names = queue_names(queue_name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            with self._lock:
                claimed, next_due = self._claim(names, 1)
                if claimed:
                    return claimed[0]
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                # Registered under the lock, so an enqueue cannot slip between look and wait.
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters[waiter] = loop
            wait = remaining
            if next_due is not None:
                wait = min(wait, max(0.001, (next_due - self._clock()).total_seconds()))
            try:
                await asyncio.wait({waiter}, timeout=wait)
            finally:
                with self._lock:
                    self._waiters.pop(waiter, None)

    async def dequeue_many(self, queue_name: str | Sequence[str], limit: int) -> list[Job]:
        with self._lock:
            return self._claim(queue_names(queue_name), limit)[0]

    def _claim(self, names: Sequence[str], limit: int) -> tuple[list[Job], datetime | None]:
        """Claim up to limit due jobs; also say when the next not-yet-due one falls due."""
        now = self._clock()
        wanted = set(names)
        due: list[Job] = []
        next_due: datetime | None = None
        for job in self._jobs.values():
            if job.queue_name not in wanted or job.status not in WAITING_STATUSES:
                continue
            if job.scheduled_at is None or job.scheduled_at <= now:
                due.append(job)
            elif next_due is None or job.scheduled_at < next_due:
                next_due = job.scheduled_at
        due.sort(key=lambda j: (-j.priority, j.created_at, self._order[j.id]))
        claimed = []
        for job in due[:limit]:
            running = lifecycle.claimed(job, now)
            self._jobs[job.id] = running
            self._leases[job.id] = now + timedelta(seconds=self.lease_seconds)
            attempts = self._attempts[job.id]
            attempts.append(JobAttempt(job_id=job.id, attempt=len(attempts) + 1, started_at=now))
            claimed.append(running)
        return claimed, next_due

    def _held(self, job_id: UUID, claim: Job | None, operation: str) -> Job:
        """The RUNNING job this claim is on, or the precise error why not."""
        job = self._get(job_id)
        lifecycle.check_claim(job, claim, operation)
        lifecycle.check_running(job, operation)
        return job

    def _get(self, job_id: UUID) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job has id {job_id}")
        return job

    def _finish_attempt(self, job: Job, outcome: JobStatus | str, error: str | None,
                        result: dict[str, Any] | None = None) -> None:
        attempts = self._attempts.get(job.id)
        if job.status is JobStatus.RUNNING and attempts and attempts[-1].finished_at is None:
            attempts[-1] = replace(
                attempts[-1],
                finished_at=self._clock(),
                outcome=str(outcome),
                error_message=error,
                result_data=dict(result or {}),
            )
        self._leases.pop(job.id, None)

    async def acknowledge(
        self, job_id: UUID, result_data: dict[str, Any] | None = None, *, claim: Job | None = None
    ) -> Job:
        result = json.loads(check_json(result_data or {}, "result_data"))
        with self._lock:
            job = self._held(job_id, claim, "acknowledge")
            self._finish_attempt(job, JobStatus.COMPLETED, None, result)
            done = lifecycle.acknowledged(job, self._clock())
            self._jobs[job_id] = done
            self._results[job_id] = result
            self._totals[job.queue_name]["completed"] += 1
            return done

    async def reject(
        self,
        job_id: UUID,
        requeue: bool = True,
        error_message: str | None = None,
        *,
        delay: float | None = None,
        claim: Job | None = None,
    ) -> Job:
        with self._lock:
            job = self._get(job_id)
            if claim is not None or job.status is JobStatus.RUNNING:
                self._held(job_id, claim, "reject")
            else:
                lifecycle.check_rejectable(job)
            return self._reject(job, requeue, clean_text(error_message), delay)

    def _reject(self, job: Job, requeue: bool, error: str | None, delay: float | None) -> Job:
        new = lifecycle.rejected(job, requeue, error, self._clock(), delay)
        totals = self._totals[job.queue_name]
        if new.retry_count > job.retry_count:
            totals["retried"] += 1
        elif new.status is JobStatus.DEAD_LETTER:
            totals["dead_lettered"] += 1
        else:
            totals["failed"] += 1
        self._finish_attempt(job, new.status, error)
        self._jobs[job.id] = new
        if new.status is JobStatus.RETRYING:
            self._wake_waiters()
        return new

    async def release(self, job_id: UUID, *, claim: Job | None = None) -> Job:
        with self._lock:
            job = self._held(job_id, claim, "release")
            self._finish_attempt(job, "released", None)
            back = lifecycle.released(job)
            self._jobs[job_id] = back
            self._wake_waiters()
            return back

    async def heartbeat(self, claims: Sequence[Job]) -> list[UUID]:
        with self._lock:
            now = self._clock()
            held = []
            for claim in claims:
                job = self._jobs.get(claim.id)
                if job and job.status is JobStatus.RUNNING and job.started_at == claim.started_at:
                    self._leases[job.id] = now + timedelta(seconds=self.lease_seconds)
                    held.append(job.id)
            return held

    async def rescue(self) -> list[UUID]:
        with self._lock:
            now = self._clock()
            expired = [job_id for job_id, until in self._leases.items() if until <= now]
            for job_id in expired:
                self._reject(self._jobs[job_id], True, lifecycle.WORKER_LOST, None)
            return expired

    async def cancel_job(self, job_id: UUID) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status not in WAITING_STATUSES:
                return False
            self._jobs[job_id] = lifecycle.cancelled(job, self._clock())
            self._totals[job.queue_name]["failed"] += 1
            return True

    async def requeue_job(self, job_id: UUID) -> Job:
        with self._lock:
            back = lifecycle.requeued(self._get(job_id))
            self._jobs[job_id] = back
            self._wake_waiters()
            return back

    # -- reading -------------------------------------------------------------------------

    async def get_job(self, job_id: UUID) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    async def get_result(self, job_id: UUID) -> dict[str, Any] | None:
        with self._lock:
            result = self._results.get(job_id)
            return dict(result) if result is not None else None

    async def get_job_attempts(self, job_id: UUID) -> list[JobAttempt]:
        with self._lock:
            return list(self._attempts.get(job_id, ()))

    def _listed(self, keep: Callable[[Job], bool], limit: int | None) -> list[Job]:
        with self._lock:
            jobs = [job for job in self._jobs.values() if keep(job)]
        jobs.sort(key=lambda j: self._order[j.id])
        return jobs if limit is None else jobs[:limit]

    async def list_jobs_by_status(self, status: JobStatus, limit: int | None = None) -> list[Job]:
        status = JobStatus(status)
        return self._listed(lambda job: job.status is status, limit)

    async def list_jobs_by_type(self, job_type: str, limit: int | None = None) -> list[Job]:
        return self._listed(lambda job: job.job_type == job_type, limit)

    async def get_queue_stats(self, queue_name: str) -> QueueStats:
        with self._lock:
            return self._stats(queue_name)

    async def get_all_queue_stats(self) -> list[QueueStats]:
        with self._lock:
            return [self._stats(name) for name in sorted(self._totals)]

    def _stats(self, queue_name: str) -> QueueStats:
        now = self._clock()
        counts = {status: 0 for status in JobStatus}
        oldest: datetime | None = None
        for job in self._jobs.values():
            if job.queue_name != queue_name:
                continue
            counts[job.status] += 1
            if job.status in WAITING_STATUSES:
                due_since = job.scheduled_at or job.created_at
                if due_since is not None and due_since <= now and (oldest is None or due_since < oldest):
                    oldest = due_since
        totals = self._totals.get(queue_name, {})
        return QueueStats(
            queue_name=queue_name,
            pending_count=counts[JobStatus.PENDING],
            running_count=counts[JobStatus.RUNNING],
            completed_count=counts[JobStatus.COMPLETED],
            failed_count=counts[JobStatus.FAILED],
            dead_letter_count=counts[JobStatus.DEAD_LETTER],
            scheduled_count=counts[JobStatus.SCHEDULED],
            retrying_count=counts[JobStatus.RETRYING],
            latency_seconds=(now - oldest).total_seconds() if oldest else 0.0,
            enqueued_total=totals.get("enqueued", 0),
            completed_total=totals.get("completed", 0),
            failed_total=totals.get("failed", 0),
            dead_lettered_total=totals.get("dead_lettered", 0),
            retried_total=totals.get("retried", 0),
        )

    # -- waking --------------------------------------------------------------------------

    def _wake_waiters(self) -> None:
        for waiter, loop in list(self._waiters.items()):
            try:
                loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # that loop is closed; its waiter will never be awaited
                self._waiters.pop(waiter, None)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
