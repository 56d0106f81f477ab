"""The job domain models shared by every job port: Job, JobStatus, JobResult, QueueStats."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any
from uuid import UUID


class JobStatus(str, Enum):
    """Where a job is in its lifecycle; the value is also the stored and displayed name."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRYING = "retrying"
    DEAD_LETTER = "dead_letter"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def is_waiting(self) -> bool:
        """Not yet running: a worker may claim it once it is due."""
        return self in WAITING_STATUSES


# The job vocabulary: every other module takes its status sets, defaults and health rules
# from here, so each is written once.
WAITING_STATUSES = frozenset({JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.RETRYING})
TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD_LETTER})
# A job that ended badly: an operator may requeue or discard it.
FAILURE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.DEAD_LETTER})
# A job in these carries the error of its last run.
ERROR_STATUSES = frozenset({JobStatus.RETRYING, JobStatus.FAILED, JobStatus.DEAD_LETTER})
# The stored values, in the enum's order; WAITING_VALUES in the same order.
STATUS_VALUES: tuple[str, ...] = tuple(status.value for status in JobStatus)
WAITING_VALUES: tuple[str, ...] = tuple(s.value for s in JobStatus if s in WAITING_STATUSES)
# Every status in the order a job moves through them: waiting, running, finished.
STATUS_FLOW: tuple[JobStatus, ...] = (
    JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.RETRYING, JobStatus.RUNNING,
    JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD_LETTER,
)

# A job's defaults where its creator names none (the seed's).
DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 0
DEFAULT_MAX_RETRIES = 3

# The seed's "Monitoring Queue Health" thresholds (QueueStats.is_failing / has_backlog).
FAILING_MIN_PROCESSED = 100
FAILING_RATE = 0.05
BACKLOG_PENDING = 1000


def failure_rate(completed: int, failed: int, dead_letter: int) -> float:
    """The seed's ratio: (failed + dead letter) / (completed + failed + dead letter); 0.0 for none."""
    processed = completed + failed + dead_letter
    return (failed + dead_letter) / processed if processed > 0 else 0.0


@dataclass(frozen=True)
class Job:
    """A background job with its complete lifecycle information (immutable)."""

    id: UUID
    queue_name: str
    job_type: str
    payload: dict[str, Any]
    priority: int = DEFAULT_PRIORITY
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_count: int = 0
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    status: JobStatus = JobStatus.PENDING
    error_message: str | None = None
    created_by: UUID | None = None
    created_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        status = JobStatus(self.status)
        # A job given a time to run and no other status waits for that time.
        if self.scheduled_at is not None and status is JobStatus.PENDING:
            status = JobStatus.SCHEDULED
        if status is not self.status:
            object.__setattr__(self, "status", status)


@dataclass(frozen=True)
class JobResult:
    """What a handler returns: success, the error on failure, and result data."""

    success: bool
    error: Exception | None = None
    result_data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueStats:
    """Counts and rates of one queue, for monitoring."""

    queue_name: str
    pending_count: int
    running_count: int
    completed_count: int
    failed_count: int
    dead_letter_count: int
    scheduled_count: int = 0
    retrying_count: int = 0
    # Age of the oldest job that is due but not yet running, in seconds (0.0 when none).
    latency_seconds: float = 0.0
    # Lifetime totals: they only grow, and survive the pruning of finished jobs.
    enqueued_total: int = 0
    completed_total: int = 0
    failed_total: int = 0
    dead_lettered_total: int = 0
    retried_total: int = 0

    @property
    def total_processed(self) -> int:
        return self.completed_count + self.failed_count + self.dead_letter_count

    @property
    def failure_rate(self) -> float:
        return failure_rate(self.completed_count, self.failed_count, self.dead_letter_count)

    @property
    def is_failing(self) -> bool:
        """Enough processed to judge, and more than FAILING_RATE of it failed."""
        return self.total_processed > FAILING_MIN_PROCESSED and self.failure_rate > FAILING_RATE

    @property
    def has_backlog(self) -> bool:
        """More than BACKLOG_PENDING jobs pending: time to add workers."""
        return self.pending_count > BACKLOG_PENDING

    @property
    def failed_runs_total(self) -> int:
        """Runs that failed over the queue's lifetime: retried, dead-lettered or failed for good."""
        return self.failed_total + self.dead_lettered_total + self.retried_total

    def count(self, status: JobStatus) -> int:
        return int(getattr(self, f"{JobStatus(status).value}_count"))


@dataclass(frozen=True)
class JobAttempt:
    """One run of a job: when it started and ended, how it ended, and why."""

    job_id: UUID
    attempt: int
    started_at: datetime
    finished_at: datetime | None = None
    outcome: str | None = None
    error_message: str | None = None
    result_data: dict[str, Any] = field(default_factory=dict)
