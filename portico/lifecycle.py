"""The job state machine's rules, written once for every adapter: what each operation turns a job into."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from portico.exceptions import InvalidJobStateError, StaleClaimError
from portico.ports.job import FAILURE_STATUSES, WAITING_STATUSES, Job, JobStatus

CANCELLED = "Job cancelled"
WORKER_LOST = "worker lost"
# What requeue (and the dashboard's discard) accepts: a job that ended badly.
REQUEUEABLE = FAILURE_STATUSES


def claimed(job: Job, now: datetime) -> Job:
    return replace(job, status=JobStatus.RUNNING, started_at=now)


def acknowledged(job: Job, now: datetime) -> Job:
    return replace(job, status=JobStatus.COMPLETED, completed_at=now)


def rejected(job: Job, requeue: bool, error: str | None, now: datetime,
             delay: float | None = None) -> Job:
    """The seed's rules: retry while retries are left, then dead letter; no requeue fails."""
    if requeue and job.retry_count < job.max_retries:
        return replace(
            job,
            status=JobStatus.RETRYING,
            retry_count=job.retry_count + 1,
            error_message=error,
            started_at=None,
            scheduled_at=now + timedelta(seconds=delay) if delay else job.scheduled_at,
        )
    status = JobStatus.DEAD_LETTER if requeue else JobStatus.FAILED
    return replace(job, status=status, failed_at=now, error_message=error)


def released(job: Job) -> Job:
    """Back to waiting, unrun: a retried job stays retrying, a scheduled one scheduled."""
    status = JobStatus.RETRYING if job.retry_count else JobStatus.PENDING
    return replace(job, status=status, started_at=None)


def cancelled(job: Job, now: datetime) -> Job:
    return replace(job, status=JobStatus.FAILED, failed_at=now, error_message=CANCELLED)


def requeued(job: Job) -> Job:
    """A fresh start for a dead-letter or failed job; its old error lives on in the history."""
    if job.status not in REQUEUEABLE:
        raise InvalidJobStateError(
            f"cannot requeue job {job.id}: it is {job.status.value}; only dead-letter and "
            "failed jobs can be requeued"
        )
    return replace(
        job,
        status=JobStatus.PENDING,
        retry_count=0,
        scheduled_at=None,
        started_at=None,
        completed_at=None,
        failed_at=None,
        error_message=None,
    )


def check_rejectable(job: Job) -> None:
    if job.status is not JobStatus.RUNNING and job.status not in WAITING_STATUSES:
        raise InvalidJobStateError(f"cannot reject job {job.id}: it is already {job.status.value}")


def check_running(job: Job, operation: str) -> None:
    if job.status is not JobStatus.RUNNING:
        raise InvalidJobStateError(
            f"cannot {operation} job {job.id}: it is {job.status.value}, not running"
        )


def stale_claim(job: Job, claim: Job | None) -> bool:
    """True when claim no longer owns job (it was rescued, released or finished since)."""
    return claim is not None and (
        job.status is not JobStatus.RUNNING or job.started_at != claim.started_at
    )


def check_claim(job: Job, claim: Job | None, operation: str) -> None:
    """Raise StaleClaimError when claim no longer owns job: its outcome must not be recorded."""
    if stale_claim(job, claim):
        raise StaleClaimError(
            f"cannot {operation} job {job.id}: the claim from {claim.started_at} is no "
            f"longer current (the job is now {job.status.value})"
        )
