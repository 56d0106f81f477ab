"""Every example of the seed (job-domain-models.md) that uses the models, run as the seed writes it.

The example code inside each test is copied from the seed; only the stand-ins the seed
leaves undefined (send_email, import_data, ValidationError, send_alert, a queue) and the
assertions around it are ours.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import MISSING, FrozenInstanceError, fields
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from portico.adapters.job_queue.memory_queue import MemoryJobQueueAdapter
from portico.kits.job import JobExecutor, JobService, RetryPolicy
from portico.ports.job import Job, JobResult, JobStatus, QueueStats
from portico.ports.job_handler import JobHandler
from portico.ports.job_queue import JobQueueAdapter as QueuePort

# The seed's field tables, in the seed's order: (name, default); MISSING means required.
SEED_JOB_FIELDS: list[tuple[str, Any]] = [
    ("id", MISSING),
    ("queue_name", MISSING),
    ("job_type", MISSING),
    ("payload", MISSING),
    ("priority", 0),
    ("max_retries", 3),
    ("retry_count", 0),
    ("scheduled_at", None),
    ("started_at", None),
    ("completed_at", None),
    ("failed_at", None),
    ("status", JobStatus.PENDING),
    ("error_message", None),
    ("created_by", None),
    ("created_at", None),
    ("metadata", {}),
]
SEED_JOB_RESULT_FIELDS: list[tuple[str, Any]] = [
    ("success", MISSING),
    ("error", None),
    ("result_data", {}),
]
SEED_QUEUE_STATS_FIELDS: list[tuple[str, Any]] = [
    ("queue_name", MISSING),
    ("pending_count", MISSING),
    ("running_count", MISSING),
    ("completed_count", MISSING),
    ("failed_count", MISSING),
    ("dead_letter_count", MISSING),
]


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


class FrozenClock:
    """A clock the test moves by hand, for the adapter's notion of now."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# -- the models' shape ----------------------------------------------------------------------


@pytest.mark.parametrize("model", [Job, JobResult, QueueStats], ids=lambda m: m.__name__)
def test_each_model_is_a_frozen_dataclass_without_slots(model: type) -> None:
    assert dataclasses.is_dataclass(model)
    assert model.__dataclass_params__.frozen
    assert "__slots__" not in vars(model)


def test_job_fields_have_the_seed_names_order_and_defaults() -> None:
    assert [f.name for f in fields(Job)] == [name for name, _ in SEED_JOB_FIELDS]
    assert [(f.name, default_of(f)) for f in fields(Job)] == SEED_JOB_FIELDS


def test_job_result_fields_have_the_seed_names_order_and_defaults() -> None:
    assert [(f.name, default_of(f)) for f in fields(JobResult)] == SEED_JOB_RESULT_FIELDS


def test_queue_stats_starts_with_the_seed_fields_and_anything_added_has_a_default() -> None:
    stats_fields = fields(QueueStats)
    seed_count = len(SEED_QUEUE_STATS_FIELDS)
    assert [(f.name, default_of(f)) for f in stats_fields[:seed_count]] == SEED_QUEUE_STATS_FIELDS
    for extra in stats_fields[seed_count:]:
        assert default_of(extra) is not MISSING, f"QueueStats.{extra.name} added without a default"


def test_mutable_defaults_are_not_shared_between_instances() -> None:
    first = Job(id=uuid4(), queue_name="default", job_type="test", payload={})
    second = Job(id=uuid4(), queue_name="default", job_type="test", payload={})
    assert first.metadata == {} and first.metadata is not second.metadata
    assert JobResult(success=True).result_data is not JobResult(success=True).result_data


def test_job_status_values_are_the_lower_case_strings() -> None:
    assert {status.name: status.value for status in JobStatus} == {
        "PENDING": "pending",
        "SCHEDULED": "scheduled",
        "RUNNING": "running",
        "COMPLETED": "completed",
        "FAILED": "failed",
        "RETRYING": "retrying",
        "DEAD_LETTER": "dead_letter",
    }
    assert issubclass(JobStatus, str)
    assert JobStatus.PENDING == "pending"
    # One vocabulary: the value is what str() and f-strings show, as in the seed's prints.
    assert str(JobStatus.DEAD_LETTER) == f"{JobStatus.DEAD_LETTER}" == "dead_letter"


def test_a_status_looked_up_by_its_value_is_the_enum_member() -> None:
    assert JobStatus("dead_letter") is JobStatus.DEAD_LETTER
    assert JobStatus("pending") is JobStatus.PENDING


def test_dataclasses_replace_builds_an_updated_job() -> None:
    job = Job(id=uuid4(), queue_name="default", job_type="test", payload={"n": 1})
    running = dataclasses.replace(job, status=JobStatus.RUNNING, started_at=datetime.now(UTC))
    assert running.status is JobStatus.RUNNING
    assert running.id == job.id and running.payload == job.payload
    assert job.status is JobStatus.PENDING


def test_queue_stats_failure_rate_is_zero_when_nothing_was_processed() -> None:
    stats = QueueStats(
        queue_name="idle",
        pending_count=7,
        running_count=1,
        completed_count=0,
        failed_count=0,
        dead_letter_count=0,
    )
    assert stats.total_processed == 0
    assert stats.failure_rate == 0.0


# -- Job ------------------------------------------------------------------------------------


def test_the_four_job_examples_build_jobs_with_the_fields_they_set() -> None:
    from uuid import uuid4
    from datetime import UTC, datetime, timedelta
    from portico.ports.job import Job, JobStatus

    # Basic job
    job = Job(
        id=uuid4(),
        queue_name="emails",
        job_type="email.send",
        payload={
            "recipient": "user@example.com",
            "subject": "Welcome",
            "body": "Welcome to our service!"
        }
    )

    # High-priority job with retries
    urgent_job = Job(
        id=uuid4(),
        queue_name="critical",
        job_type="payment.process",
        payload={"payment_id": "pay_123", "amount": 1000},
        priority=10,  # High priority
        max_retries=5  # More retries for critical jobs
    )

    # Scheduled job
    scheduled_job = Job(
        id=uuid4(),
        queue_name="reminders",
        job_type="reminder.send",
        payload={"user_id": "user_123", "message": "Meeting in 1 hour"},
        scheduled_at=datetime.now(UTC) + timedelta(hours=1)  # Execute in 1 hour
    )

    # Job with user tracking and metadata
    tracked_job = Job(
        id=uuid4(),
        queue_name="reports",
        job_type="report.generate",
        payload={"report_type": "monthly", "month": "2025-01"},
        created_by=uuid4(),  # Track who created the job
        metadata={"department": "sales", "cost_center": "CC-123"}
    )

    assert job.status is JobStatus.PENDING
    assert (job.priority, job.max_retries, job.retry_count) == (0, 3, 0)
    assert job.payload["subject"] == "Welcome"
    assert (urgent_job.priority, urgent_job.max_retries) == (10, 5)
    assert scheduled_job.status is JobStatus.SCHEDULED
    assert scheduled_job.scheduled_at > datetime.now(UTC)
    assert isinstance(tracked_job.created_by, UUID)
    assert tracked_job.metadata == {"department": "sales", "cost_center": "CC-123"}


# -- JobStatus ------------------------------------------------------------------------------


def seed_status_check(job: Job) -> None:
    # Check job status  (the seed's if-chain, verbatim)
    if job.status == JobStatus.PENDING:
        print("Job is waiting to be processed")
    elif job.status == JobStatus.RUNNING:
        print("Job is currently executing")
    elif job.status == JobStatus.COMPLETED:
        print("Job completed successfully")
    elif job.status == JobStatus.RETRYING:
        print(f"Job failed, retrying ({job.retry_count}/{job.max_retries})")
    elif job.status == JobStatus.DEAD_LETTER:
        print(f"Job failed permanently: {job.error_message}")


@pytest.mark.parametrize(
    ("changes", "printed"),
    [
        ({}, "Job is waiting to be processed\n"),
        ({"status": JobStatus.RUNNING}, "Job is currently executing\n"),
        ({"status": JobStatus.COMPLETED}, "Job completed successfully\n"),
        ({"status": JobStatus.RETRYING, "retry_count": 2}, "Job failed, retrying (2/3)\n"),
        (
            {"status": JobStatus.DEAD_LETTER, "error_message": "SMTP down"},
            "Job failed permanently: SMTP down\n",
        ),
        ({"status": JobStatus.FAILED}, ""),
    ],
    ids=lambda value: value.get("status", "pending") if isinstance(value, dict) else None,
)
def test_the_status_checks_print_what_the_seed_says(
    changes: dict[str, Any], printed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = Job(id=uuid4(), queue_name="emails", job_type="email.send", payload={}, **changes)
    seed_status_check(job)
    assert capsys.readouterr().out == printed


def test_the_status_transitions_rebuild_the_job_through_its_dict() -> None:
    job = Job(id=uuid4(), queue_name="emails", job_type="email.send", payload={"to": "a@b.c"})

    # Status transitions
    assert job.status == JobStatus.PENDING  # Initially pending

    # After dequeue
    job = Job(**{**job.__dict__, "status": JobStatus.RUNNING, "started_at": datetime.now(UTC)})
    assert job.status is JobStatus.RUNNING and job.started_at is not None

    # After successful completion
    job = Job(**{**job.__dict__, "status": JobStatus.COMPLETED, "completed_at": datetime.now(UTC)})
    assert job.status is JobStatus.COMPLETED
    assert job.completed_at >= job.started_at
    assert job.payload == {"to": "a@b.c"}


def test_a_job_rebuilt_from_a_scheduled_jobs_dict_stays_scheduled_unless_told_otherwise() -> None:
    scheduled = Job(
        id=uuid4(), queue_name="q", job_type="t", payload={},
        scheduled_at=datetime.now(UTC) + timedelta(hours=1),
    )
    assert Job(**scheduled.__dict__).status is JobStatus.SCHEDULED
    running = Job(**{**scheduled.__dict__, "status": JobStatus.RUNNING})
    assert running.status is JobStatus.RUNNING


# -- JobResult ------------------------------------------------------------------------------


def test_the_job_result_examples_hold_success_error_and_data() -> None:
    from portico.ports.job import JobResult

    # Successful execution
    result = JobResult(
        success=True,
        result_data={
            "email_sent": True,
            "message_id": "msg_abc123",
            "sent_at": "2025-01-15T10:30:00Z"
        }
    )
    assert result.success and result.error is None
    assert result.result_data["message_id"] == "msg_abc123"

    # Failed execution with error
    result = JobResult(
        success=False,
        error=ConnectionError("SMTP server unavailable"),
        result_data={"retry_recommended": True}
    )
    assert not result.success
    assert isinstance(result.error, ConnectionError)
    assert str(result.error) == "SMTP server unavailable"

    # Partial success
    result = JobResult(
        success=True,
        result_data={
            "records_processed": 95,
            "records_skipped": 5,
            "warnings": ["Invalid data in row 23", "Missing field in row 67"]
        }
    )
    assert result.success and len(result.result_data["warnings"]) == 2


class SeedEmailHandler(JobHandler):
    """The seed's "Usage in handler" example, with the send_email it leaves undefined."""

    job_type = "email.send"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[str] = []

    async def send_email(self, recipient: str) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append(recipient)

    # Usage in handler  (verbatim)
    async def handle(self, job: Job) -> JobResult:
        try:
            await self.send_email(job.payload["recipient"])
            return JobResult(success=True)
        except Exception as e:
            return JobResult(success=False, error=e)


async def test_the_handler_usage_example_returns_success_or_the_caught_error() -> None:
    job = Job(id=uuid4(), queue_name="emails", job_type="email.send",
              payload={"recipient": "user@example.com"})

    handler = SeedEmailHandler()
    result = await handler.handle(job)
    assert result == JobResult(success=True)
    assert handler.sent == ["user@example.com"]

    error = ConnectionError("SMTP server unavailable")
    result = await SeedEmailHandler(error).handle(job)
    assert not result.success and result.error is error


# -- QueueStats -----------------------------------------------------------------------------


def test_the_queue_stats_example_prints_the_alert_and_failure_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from portico.ports.job import QueueStats

    stats = QueueStats(
        queue_name="emails",
        pending_count=42,
        running_count=5,
        completed_count=1250,
        failed_count=3,
        dead_letter_count=1
    )

    # Monitor queue health
    if stats.pending_count > 100:
        print(f"Warning: Queue {stats.queue_name} has backlog of {stats.pending_count} jobs")

    if stats.dead_letter_count > 0:
        print(f"Alert: {stats.dead_letter_count} jobs in dead letter queue need review")

    # Calculate failure rate
    total_processed = stats.completed_count + stats.failed_count + stats.dead_letter_count
    if total_processed > 0:
        failure_rate = (stats.failed_count + stats.dead_letter_count) / total_processed
        print(f"Failure rate: {failure_rate:.2%}")

    assert capsys.readouterr().out == (
        "Alert: 1 jobs in dead letter queue need review\n"
        "Failure rate: 0.32%\n"
    )
    assert stats.total_processed == total_processed == 1254
    assert stats.failure_rate == pytest.approx(failure_rate)
    assert stats.failure_rate == pytest.approx(4 / 1254)


def test_a_queue_with_a_backlog_prints_the_backlog_warning(capsys: pytest.CaptureFixture[str]) -> None:
    stats = QueueStats(
        queue_name="emails",
        pending_count=142,
        running_count=5,
        completed_count=10,
        failed_count=0,
        dead_letter_count=0,
    )
    if stats.pending_count > 100:
        print(f"Warning: Queue {stats.queue_name} has backlog of {stats.pending_count} jobs")
    assert capsys.readouterr().out == "Warning: Queue emails has backlog of 142 jobs\n"
    assert stats.failure_rate == 0.0


# -- Common Patterns ------------------------------------------------------------------------


async def test_pattern_1_jobs_are_processed_in_priority_order() -> None:
    from uuid import uuid4
    from portico.ports.job import Job

    # Critical payment processing (high priority)
    payment_job = Job(
        id=uuid4(),
        queue_name="payments",
        job_type="payment.process",
        payload={"payment_id": "pay_123"},
        priority=10  # Highest priority
    )

    # Standard email notification (medium priority)
    email_job = Job(
        id=uuid4(),
        queue_name="notifications",
        job_type="email.send",
        payload={"recipient": "user@example.com"},
        priority=5  # Medium priority
    )

    # Background cleanup (low priority)
    cleanup_job = Job(
        id=uuid4(),
        queue_name="maintenance",
        job_type="cleanup.temp_files",
        payload={"max_age_days": 30},
        priority=1  # Low priority
    )

    # Jobs will be processed in priority order: payment (10) → email (5) → cleanup (1)
    queue = MemoryJobQueueAdapter()
    for job in (cleanup_job, email_job, payment_job):  # enqueued lowest first on purpose
        await queue.enqueue(job)
    queues = ["payments", "notifications", "maintenance"]
    order = [(await queue.dequeue(queues, timeout=0)).id for _ in range(3)]
    assert order == [payment_job.id, email_job.id, cleanup_job.id]


async def test_pattern_2_a_scheduled_job_starts_as_scheduled_and_waits_for_its_time() -> None:
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4
    from portico.ports.job import Job, JobStatus

    # Send reminder 24 hours before event
    event_time = datetime(2025, 10, 25, 14, 0, tzinfo=UTC)
    reminder_time = event_time - timedelta(hours=24)

    reminder_job = Job(
        id=uuid4(),
        queue_name="reminders",
        job_type="reminder.send",
        payload={
            "user_id": "user_123",
            "event": "Team Meeting",
            "event_time": event_time.isoformat()
        },
        scheduled_at=reminder_time  # Execute 24 hours before event
    )

    # Job starts as SCHEDULED status
    assert reminder_job.status == JobStatus.SCHEDULED

    # Queue adapter won't dequeue until reminder_time is reached
    clock = FrozenClock(reminder_time - timedelta(hours=1))
    queue = MemoryJobQueueAdapter(clock=clock)
    stored = await queue.enqueue(reminder_job)
    assert stored.status is JobStatus.SCHEDULED
    assert await queue.dequeue("reminders", timeout=0) is None
    clock.now = reminder_time
    claimed = await queue.dequeue("reminders", timeout=0)
    assert claimed is not None and claimed.id == reminder_job.id


async def test_pattern_3_retry_configuration_sets_max_retries_and_zero_fails_at_once() -> None:
    from uuid import uuid4
    from portico.ports.job import Job

    # Critical job with more retries
    critical_job = Job(
        id=uuid4(),
        queue_name="critical",
        job_type="payment.process",
        payload={"payment_id": "pay_123"},
        max_retries=5  # Allow 5 retry attempts
    )

    # Quick-fail job with no retries (idempotency required)
    idempotent_job = Job(
        id=uuid4(),
        queue_name="webhooks",
        job_type="webhook.send",
        payload={"url": "https://api.example.com/webhook"},
        max_retries=0  # Don't retry, fail immediately
    )

    # Standard job with default retries
    standard_job = Job(
        id=uuid4(),
        queue_name="default",
        job_type="report.generate",
        payload={"report_type": "daily"},
        max_retries=3  # Default: 3 retries
    )

    assert [j.max_retries for j in (critical_job, idempotent_job, standard_job)] == [5, 0, 3]

    queue = MemoryJobQueueAdapter()
    await queue.enqueue(idempotent_job)
    claimed = await queue.dequeue("webhooks", timeout=0)
    failed = await queue.reject(claimed.id, requeue=True, error_message="503")
    assert failed.status is JobStatus.DEAD_LETTER and failed.retry_count == 0


def test_pattern_4_lifecycle_timestamps_are_tracked_and_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from datetime import UTC, datetime
    from uuid import uuid4
    from portico.ports.job import Job, JobStatus

    # Create job
    job = Job(
        id=uuid4(),
        queue_name="processing",
        job_type="data.import",
        payload={"file_path": "/uploads/data.csv"},
        created_at=datetime.now(UTC)
    )

    print(f"Job created at: {job.created_at}")

    # Job dequeued and started
    job = Job(**{**job.__dict__,
        "status": JobStatus.RUNNING,
        "started_at": datetime.now(UTC)
    })

    print(f"Job started at: {job.started_at}")
    print(f"Wait time: {(job.started_at - job.created_at).seconds}s")

    # Job completed
    job = Job(**{**job.__dict__,
        "status": JobStatus.COMPLETED,
        "completed_at": datetime.now(UTC)
    })

    print(f"Job completed at: {job.completed_at}")
    print(f"Execution time: {(job.completed_at - job.started_at).seconds}s")
    print(f"Total time: {(job.completed_at - job.created_at).seconds}s")

    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"Job created at: {job.created_at}",
        f"Job started at: {job.started_at}",
        "Wait time: 0s",
        f"Job completed at: {job.completed_at}",
        "Execution time: 0s",
        "Total time: 0s",
    ]
    assert job.status is JobStatus.COMPLETED
    assert job.created_at <= job.started_at <= job.completed_at


async def test_pattern_5_metadata_is_kept_apart_from_the_payload() -> None:
    from uuid import uuid4
    from portico.ports.job import Job

    # Job with business context metadata
    job = Job(
        id=uuid4(),
        queue_name="reports",
        job_type="report.generate",
        payload={"report_type": "sales", "month": "2025-01"},
        metadata={
            "department": "sales",
            "cost_center": "CC-SALES-01",
            "requested_by": "manager@example.com",
            "urgency": "high",
            "tags": ["monthly", "executive"]
        }
    )

    assert "department" not in job.payload
    stored = await MemoryJobQueueAdapter().enqueue(job)
    assert stored.metadata == job.metadata
    assert stored.metadata["tags"] == ["monthly", "executive"]


class ValidationError(Exception):
    """Stand-in for the ValidationError the seed's pattern 6 catches."""


def make_seed_process_job(sent: list[dict[str, Any]], imports: dict[str, Any]):
    """The seed's pattern 6, with the send_email and import_data it leaves undefined."""

    async def send_email(to: str, subject: str, body: str) -> str:
        if "@" not in to:
            raise ValidationError(f"invalid recipient {to!r}")
        if to.endswith("@down.example.com"):
            raise ConnectionError("SMTP server unavailable")
        sent.append({"to": to, "subject": subject, "body": body})
        return f"msg_{len(sent)}"

    async def import_data(file_path: str) -> list[dict[str, Any]]:
        return imports[file_path]

    # -- verbatim from the seed --
    async def process_job(job: Job) -> JobResult:
        """Process a job and return detailed result."""
        try:
            if job.job_type == "email.send":
                message_id = await send_email(
                    to=job.payload["recipient"],
                    subject=job.payload["subject"],
                    body=job.payload["body"]
                )

                return JobResult(
                    success=True,
                    result_data={
                        "message_id": message_id,
                        "sent_at": datetime.now(UTC).isoformat(),
                        "recipient": job.payload["recipient"]
                    }
                )

            elif job.job_type == "data.import":
                records = await import_data(job.payload["file_path"])

                return JobResult(
                    success=True,
                    result_data={
                        "records_imported": len(records),
                        "file_path": job.payload["file_path"],
                        "duration_ms": 1234
                    }
                )

        except ValidationError as e:
            # Don't retry validation errors
            return JobResult(
                success=False,
                error=e,
                result_data={"error_type": "validation", "retry_recommended": False}
            )

        except ConnectionError as e:
            # Retry connection errors
            return JobResult(
                success=False,
                error=e,
                result_data={"error_type": "connection", "retry_recommended": True}
            )

    return process_job


def email_job(recipient: str) -> Job:
    return Job(
        id=uuid4(), queue_name="emails", job_type="email.send",
        payload={"recipient": recipient, "subject": "Hi", "body": "Hello"},
    )


async def test_pattern_6_process_job_returns_the_seed_results_for_each_outcome() -> None:
    sent: list[dict[str, Any]] = []
    process_job = make_seed_process_job(sent, {"/uploads/data.csv": [{"id": 1}, {"id": 2}]})

    ok = await process_job(email_job("user@example.com"))
    assert ok.success
    assert ok.result_data["message_id"] == "msg_1"
    assert ok.result_data["recipient"] == "user@example.com"
    assert datetime.fromisoformat(ok.result_data["sent_at"]).tzinfo is not None

    imported = await process_job(Job(
        id=uuid4(), queue_name="processing", job_type="data.import",
        payload={"file_path": "/uploads/data.csv"},
    ))
    assert imported.result_data == {
        "records_imported": 2, "file_path": "/uploads/data.csv", "duration_ms": 1234,
    }

    invalid = await process_job(email_job("not-an-address"))
    assert not invalid.success and isinstance(invalid.error, ValidationError)
    assert invalid.result_data == {"error_type": "validation", "retry_recommended": False}

    down = await process_job(email_job("user@down.example.com"))
    assert not down.success and isinstance(down.error, ConnectionError)
    assert down.result_data == {"error_type": "connection", "retry_recommended": True}


async def test_pattern_6_results_drive_the_retry_decision_when_run_by_a_worker() -> None:
    process_job = make_seed_process_job([], {})

    class ProcessJobHandler(JobHandler):
        job_type = "email.send"

        async def handle(self, job: Job) -> JobResult:
            return await process_job(job)

    queue = MemoryJobQueueAdapter()
    executor = JobExecutor(queue, [ProcessJobHandler()], retry_policy=RetryPolicy(base=0, cap=0))
    outcomes = {}
    for recipient in ("user@example.com", "not-an-address", "user@down.example.com"):
        await queue.enqueue(email_job(recipient))
        claimed = await queue.dequeue("emails", timeout=0)
        outcomes[recipient] = (await executor.execute(claimed)).status
    assert outcomes == {
        "user@example.com": JobStatus.COMPLETED,
        "not-an-address": JobStatus.FAILED,
        "user@down.example.com": JobStatus.RETRYING,
    }


def make_seed_monitor(send_alert):
    from portico.ports.job import QueueStats

    # -- verbatim from the seed --
    async def monitor_queue_health(stats: QueueStats) -> None:
        """Monitor queue and send alerts based on metrics."""

        # Alert on large backlog
        if stats.pending_count > 1000:
            await send_alert(
                level="warning",
                message=f"Queue {stats.queue_name} has {stats.pending_count} pending jobs",
                recommendation="Consider scaling up workers"
            )

        # Alert on dead letter jobs
        if stats.dead_letter_count > 0:
            await send_alert(
                level="error",
                message=f"{stats.dead_letter_count} jobs in dead letter queue",
                recommendation="Review and fix failed jobs manually"
            )

        # Calculate and alert on failure rate
        total_completed = stats.completed_count + stats.failed_count + stats.dead_letter_count
        if total_completed > 100:
            failure_rate = (stats.failed_count + stats.dead_letter_count) / total_completed

            if failure_rate > 0.05:  # 5% failure rate
                await send_alert(
                    level="warning",
                    message=f"Queue {stats.queue_name} has {failure_rate:.1%} failure rate",
                    recommendation="Investigate error patterns"
                )

        # Alert on stalled processing
        if stats.running_count == 0 and stats.pending_count > 0:
            await send_alert(
                level="critical",
                message=f"Queue {stats.queue_name} has pending jobs but no active workers",
                recommendation="Check worker health"
            )

    return monitor_queue_health


@pytest.fixture
def alerts() -> list[dict[str, str]]:
    return []


@pytest.fixture
def monitor_queue_health(alerts: list[dict[str, str]]):
    async def send_alert(**alert: str) -> None:
        alerts.append(alert)

    return make_seed_monitor(send_alert)


async def test_pattern_7_a_healthy_queue_raises_no_alert(monitor_queue_health, alerts) -> None:
    await monitor_queue_health(QueueStats(
        queue_name="emails", pending_count=42, running_count=5,
        completed_count=1250, failed_count=3, dead_letter_count=0,
    ))
    assert alerts == []


async def test_pattern_7_a_sick_queue_raises_every_alert(monitor_queue_health, alerts) -> None:
    stats = QueueStats(
        queue_name="emails", pending_count=1500, running_count=0,
        completed_count=90, failed_count=20, dead_letter_count=2,
    )
    await monitor_queue_health(stats)
    assert alerts == [
        {"level": "warning", "message": "Queue emails has 1500 pending jobs",
         "recommendation": "Consider scaling up workers"},
        {"level": "error", "message": "2 jobs in dead letter queue",
         "recommendation": "Review and fix failed jobs manually"},
        {"level": "warning", "message": "Queue emails has 19.6% failure rate",
         "recommendation": "Investigate error patterns"},
        {"level": "critical", "message": "Queue emails has pending jobs but no active workers",
         "recommendation": "Check worker health"},
    ]
    assert stats.failure_rate == pytest.approx(22 / 112)


async def test_pattern_7_runs_on_the_stats_a_real_queue_reports(monitor_queue_health, alerts) -> None:
    queue = MemoryJobQueueAdapter()
    job = await queue.enqueue(Job(id=uuid4(), queue_name="emails", job_type="e", payload={},
                                  max_retries=0))
    await queue.enqueue(Job(id=uuid4(), queue_name="emails", job_type="e", payload={}))
    await queue.dequeue("emails", timeout=0)
    await queue.reject(job.id, error_message="boom")
    await monitor_queue_health(await queue.get_queue_stats("emails"))
    assert [alert["level"] for alert in alerts] == ["error", "critical"]


# -- Best Practices -------------------------------------------------------------------------


async def test_best_practice_1_a_json_payload_serializes_and_a_uuid_or_datetime_one_does_not() -> None:
    from datetime import datetime
    from uuid import UUID, uuid4
    import json

    # ✅ GOOD - JSON-serializable payload
    job = Job(
        id=uuid4(),
        queue_name="default",
        job_type="email.send",
        payload={
            "recipient": "user@example.com",
            "subject": "Hello",
            "user_id": str(uuid4()),  # Convert UUID to string
            "timestamp": datetime.now().isoformat()  # Convert datetime to string
        }
    )

    # Verify serializable
    assert json.dumps(job.payload)  # No error
    queue = MemoryJobQueueAdapter()
    await queue.enqueue(job)

    # ❌ BAD - Non-serializable payload
    job = Job(
        id=uuid4(),
        queue_name="default",
        job_type="email.send",
        payload={
            "recipient": "user@example.com",
            "user_id": uuid4(),  # ❌ UUID not JSON-serializable
            "timestamp": datetime.now()  # ❌ datetime not JSON-serializable
        }
    )

    # Will fail when queue adapter tries to serialize
    with pytest.raises(TypeError):
        json.dumps(job.payload)  # ❌ TypeError

    with pytest.raises(ValueError, match="user_id"):
        await queue.enqueue(job)
    assert await queue.get_job(job.id) is None


def test_best_practice_2_descriptive_and_vague_job_types_both_build_jobs() -> None:
    # ✅ GOOD - Descriptive, hierarchical names
    email_job = Job(
        id=uuid4(),
        queue_name="notifications",
        job_type="email.send.transactional",  # Clear hierarchy
        payload={"recipient": "user@example.com"}
    )

    report_job = Job(
        id=uuid4(),
        queue_name="reports",
        job_type="report.generate.monthly.sales",  # Very specific
        payload={"month": "2025-01"}
    )

    # ❌ BAD - Vague names
    job = Job(
        id=uuid4(),
        queue_name="default",
        job_type="process",  # ❌ Too vague
        payload={"data": "something"}
    )
    assert job.job_type == "process"

    job = Job(
        id=uuid4(),
        queue_name="default",
        job_type="job1",  # ❌ Meaningless
        payload={}
    )

    assert email_job.job_type == "email.send.transactional"
    assert report_job.job_type == "report.generate.monthly.sales"
    assert job.job_type == "job1" and job.payload == {}


def test_best_practice_3_retries_match_the_job() -> None:
    # ✅ GOOD - Retries match job characteristics

    # Critical jobs: more retries
    payment_job = Job(
        id=uuid4(),
        queue_name="payments",
        job_type="payment.charge",
        payload={"amount": 1000},
        max_retries=5  # Important, allow more retries
    )

    # Idempotent jobs: fewer retries
    webhook_job = Job(
        id=uuid4(),
        queue_name="webhooks",
        job_type="webhook.send",
        payload={"url": "https://api.example.com"},
        max_retries=1  # Quick fail, external system may be down
    )

    # Non-idempotent jobs: no retries
    unique_job = Job(
        id=uuid4(),
        queue_name="default",
        job_type="user.create",
        payload={"email": "user@example.com"},
        max_retries=0  # Don't retry to avoid duplicates
    )

    assert [j.max_retries for j in (payment_job, webhook_job, unique_job)] == [5, 1, 0]


def test_best_practice_3_bad_example_omits_the_payload_the_field_table_requires() -> None:
    # The seed's "❌ BAD" example leaves out payload, which the seed's own Job table marks
    # required with no default; the table wins (SPEC: fields and defaults are the tables').
    with pytest.raises(TypeError, match="payload"):
        job = Job(
            id=uuid4(),
            queue_name="default",
            job_type="critical.payment",
            max_retries=3  # ❌ Too few for critical job
        )


async def test_best_practice_4_priority_reflects_urgency() -> None:
    # ✅ GOOD - Priority based on urgency

    # Urgent: Real-time user action (needs immediate response)
    verification_job = Job(
        id=uuid4(),
        queue_name="realtime",
        job_type="sms.verification",
        payload={"phone": "+1234567890"},
        priority=10  # High priority - user is waiting
    )

    # Normal: Scheduled notification (not time-sensitive)
    newsletter_job = Job(
        id=uuid4(),
        queue_name="emails",
        job_type="email.newsletter",
        payload={"list": "subscribers"},
        priority=3  # Low priority - can wait
    )

    # ❌ BAD - Priority based on business importance
    payment_job = Job(
        id=uuid4(),
        queue_name="default",
        job_type="payment.record",  # Important but not urgent
        payload={"amount": 1000000},  # Large amount
        priority=10  # ❌ High priority just because amount is large
    )

    assert (verification_job.priority, newsletter_job.priority, payment_job.priority) == (10, 3, 10)
    queue = MemoryJobQueueAdapter()
    await queue.enqueue(newsletter_job)
    await queue.enqueue(verification_job)
    first = await queue.dequeue(["emails", "realtime"], timeout=0)
    assert first.id == verification_job.id


def test_best_practice_5_metadata_carries_cross_cutting_context() -> None:
    # ✅ GOOD - Metadata for cross-cutting concerns
    job = Job(
        id=uuid4(),
        queue_name="reports",
        job_type="report.generate",
        payload={
            # Only data needed by handler
            "report_type": "sales",
            "start_date": "2025-01-01",
            "end_date": "2025-01-31"
        },
        metadata={
            # Cross-cutting concerns
            "tenant_id": "tenant_123",
            "cost_center": "CC-SALES",
            "requested_by": "manager@example.com",
            "correlation_id": "req_abc123",
            "tags": ["monthly", "executive"]
        }
    )
    assert job.metadata["correlation_id"] == "req_abc123"
    assert set(job.payload) == {"report_type", "start_date", "end_date"}

    # ❌ BAD - Everything in payload
    job = Job(
        id=uuid4(),
        queue_name="reports",
        job_type="report.generate",
        payload={
            "report_type": "sales",
            "start_date": "2025-01-01",
            "tenant_id": "tenant_123",  # ❌ Cross-cutting concern
            "requested_by": "manager@example.com",  # ❌ Not needed by handler
            "correlation_id": "req_abc123"  # ❌ Audit data
        }
    )
    assert job.metadata == {}


def test_best_practice_6_a_delayed_job_uses_scheduled_at() -> None:
    from datetime import UTC, datetime, timedelta

    # ✅ GOOD - Use scheduled_at
    future_job = Job(
        id=uuid4(),
        queue_name="reminders",
        job_type="reminder.send",
        payload={"user_id": "user_123"},
        scheduled_at=datetime.now(UTC) + timedelta(hours=24)
    )

    # ❌ BAD - Handler delays execution
    job = Job(
        id=uuid4(),
        queue_name="default",
        job_type="delayed.task",
        payload={"delay_seconds": 86400}  # ❌ Handler must sleep
    )

    assert future_job.status is JobStatus.SCHEDULED
    assert job.status is JobStatus.PENDING and job.scheduled_at is None


def test_best_practice_7_created_by_tracks_who_asked_for_the_job() -> None:
    from uuid import UUID, uuid4

    # ✅ GOOD - Track job creator
    def create_report_job(user_id: UUID, report_type: str):
        return Job(
            id=uuid4(),
            queue_name="reports",
            job_type="report.generate",
            payload={"report_type": report_type},
            created_by=user_id,  # Track who requested the report
            metadata={
                "requested_at": datetime.now(UTC).isoformat(),
                "ip_address": "192.168.1.100"
            }
        )

    user_id = uuid4()
    job = create_report_job(user_id, "sales")
    assert job.created_by == user_id
    assert job.payload == {"report_type": "sales"}
    assert datetime.fromisoformat(job.metadata["requested_at"]).tzinfo is not None

    # ❌ BAD - No creator tracking
    job = Job(
        id=uuid4(),
        queue_name="reports",
        job_type="report.generate",
        payload={"report_type": "sales"},
        # ❌ No created_by - can't trace back to user
    )
    assert job.created_by is None


# -- FAQs -----------------------------------------------------------------------------------


def test_faq_a_job_cannot_be_assigned_to_and_is_updated_by_building_a_new_one() -> None:
    from portico.ports.job import Job, JobStatus

    # Job is immutable - can't modify fields
    job = Job(id=uuid4(), queue_name="default", job_type="test", payload={})

    # ❌ This would raise an error
    with pytest.raises(FrozenInstanceError):
        job.status = JobStatus.RUNNING  # FrozenInstanceError

    # ✅ Create new instance with updated fields
    updated_job = Job(**{**job.__dict__, "status": JobStatus.RUNNING})

    assert updated_job.status is JobStatus.RUNNING
    assert job.status is JobStatus.PENDING


def test_faq_a_jobs_status_is_updated_through_dictionary_unpacking() -> None:
    from datetime import UTC, datetime

    # Original job
    job = Job(
        id=uuid4(),
        queue_name="default",
        job_type="email.send",
        payload={"recipient": "user@example.com"},
        status=JobStatus.PENDING
    )

    # Update status to RUNNING
    running_job = Job(
        **{**job.__dict__,
            "status": JobStatus.RUNNING,
            "started_at": datetime.now(UTC)
        }
    )

    # Update status to COMPLETED
    completed_job = Job(
        **{**running_job.__dict__,
            "status": JobStatus.COMPLETED,
            "completed_at": datetime.now(UTC)
        }
    )

    assert (job.status, running_job.status, completed_job.status) == (
        JobStatus.PENDING, JobStatus.RUNNING, JobStatus.COMPLETED,
    )
    assert completed_job.started_at == running_job.started_at
    assert completed_job.id == job.id


async def test_faq_reject_without_requeue_fails_and_exhausted_retries_dead_letter() -> None:
    job_queue = MemoryJobQueueAdapter()
    job = await job_queue.enqueue(
        Job(id=uuid4(), queue_name="default", job_type="email.send", payload={"to": "x"})
    )

    # FAILED - validation error, don't retry
    await job_queue.reject(
        job.id,
        requeue=False,  # Don't retry
        error_message="Invalid email address"
    )
    # Job status becomes FAILED
    failed = await job_queue.get_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_message == "Invalid email address"
    assert failed.failed_at is not None

    # DEAD_LETTER - exhausted retries
    job_with_retries = Job(
        id=uuid4(),
        queue_name="default",
        job_type="test",
        payload={},
        max_retries=3,
        retry_count=3  # Already retried 3 times
    )
    await job_queue.enqueue(job_with_retries)

    await job_queue.reject(
        job_with_retries.id,
        requeue=True,  # Try to requeue
        error_message="Still failing"
    )
    # Job status becomes DEAD_LETTER (exhausted retries)
    dead = await job_queue.get_job(job_with_retries.id)
    assert dead.status is JobStatus.DEAD_LETTER
    assert dead.error_message == "Still failing"
    assert dead.retry_count == 3 and dead.failed_at is not None


async def test_faq_large_data_belongs_in_a_reference_and_an_unserializable_payload_is_refused() -> None:
    # ✅ GOOD - Reference to data
    job = Job(
        id=uuid4(),
        queue_name="processing",
        job_type="file.process",
        payload={
            "file_path": "s3://bucket/uploads/data.csv",  # Reference
            "file_id": "file_123"
        }
    )
    queue = MemoryJobQueueAdapter()
    await queue.enqueue(job)

    # ❌ BAD - Large data in payload
    job = Job(
        id=uuid4(),
        queue_name="processing",
        job_type="data.process",
        payload={
            "data": "...10MB of data...",  # ❌ Too large
            "records": [{"id": 1, "name": "..."}, ...]  # ❌ 10,000 records
        }
    )
    # The literal ``...`` in the seed's list is Python's Ellipsis: not JSON, so refused.
    with pytest.raises(ValueError, match="records"):
        await queue.enqueue(job)
    assert await queue.get_job(job.id) is None


async def test_faq_option_1_a_handler_chains_a_dependent_job_through_the_creator() -> None:
    # The seed's class, verbatim; it leaves job_type, generate_report and job_creator open.
    class ReportJobHandler(JobHandler):
        async def handle(self, job: Job) -> JobResult:
            # Process report
            report = await self.generate_report(job.payload)

            # Create dependent job
            await self.job_creator.create_job(
                job_type="email.send",
                payload={
                    "recipient": job.payload["user_email"],
                    "subject": "Report Ready",
                    "report_url": report.url
                }
            )

            return JobResult(success=True, result_data={"report_id": report.id})

    class Report:
        id = "rpt_1"
        url = "https://reports.example.com/rpt_1"

    class WiredReportJobHandler(ReportJobHandler):
        job_type = "report.generate"

        def __init__(self, job_creator: JobService) -> None:
            self.job_creator = job_creator

        async def generate_report(self, payload: dict[str, Any]) -> Report:
            return Report()

    queue = MemoryJobQueueAdapter()
    creator = JobService(queue, job_types=["report.generate", "email.send"])
    handler = WiredReportJobHandler(creator)
    parent = await creator.create_job("report.generate", {"user_email": "boss@example.com"})

    result = await handler.handle(parent)

    assert result == JobResult(success=True, result_data={"report_id": "rpt_1"})
    [child] = await queue.list_jobs_by_type("email.send")
    assert child.queue_name == "default"
    assert child.payload == {
        "recipient": "boss@example.com",
        "subject": "Report Ready",
        "report_url": "https://reports.example.com/rpt_1",
    }


def test_faq_option_2_metadata_tracks_the_parent_job() -> None:
    # Option 2: Use metadata to track dependencies
    parent_job = Job(
        id=uuid4(),
        queue_name="reports",
        job_type="report.generate",
        payload={"report_type": "sales"}
    )

    child_job = Job(
        id=uuid4(),
        queue_name="emails",
        job_type="email.send",
        payload={"subject": "Report Ready"},
        metadata={"parent_job_id": str(parent_job.id)}  # Track parent
    )

    assert UUID(child_job.metadata["parent_job_id"]) == parent_job.id


def test_faq_the_seeds_query_methods_exist_on_the_queue_port() -> None:
    from abc import ABC

    # Queue adapter provides query methods  (the seed's sketch, verbatim)
    class JobQueueAdapter(ABC):
        async def get_job(self, job_id: UUID) -> Job | None:
            """Get job by ID."""

        async def list_jobs_by_status(self, status: JobStatus) -> list[Job]:
            """List jobs by status."""

        async def list_jobs_by_type(self, job_type: str) -> list[Job]:
            """List jobs by type."""

    for name in ("get_job", "list_jobs_by_status", "list_jobs_by_type"):
        seed_params = list(inspect.signature(getattr(JobQueueAdapter, name)).parameters)
        port_method = getattr(QueuePort, name)
        assert inspect.iscoroutinefunction(port_method)
        port_params = list(inspect.signature(port_method).parameters)
        assert port_params[: len(seed_params)] == seed_params
        for extra in list(inspect.signature(port_method).parameters.values())[len(seed_params):]:
            assert extra.default is not inspect.Parameter.empty


async def test_faq_dead_letter_jobs_are_listed_by_status_and_jobs_by_type(
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_queue = MemoryJobQueueAdapter()
    doomed = await job_queue.enqueue(
        Job(id=uuid4(), queue_name="default", job_type="email.send", payload={}, max_retries=0)
    )
    await job_queue.enqueue(Job(id=uuid4(), queue_name="default", job_type="report.generate",
                                payload={}))
    await job_queue.reject(doomed.id, requeue=True, error_message="SMTP down")

    # Usage
    dead_letter_jobs = await job_queue.list_jobs_by_status(JobStatus.DEAD_LETTER)
    for job in dead_letter_jobs:
        print(f"Failed job: {job.id}, error: {job.error_message}")

    assert capsys.readouterr().out == f"Failed job: {doomed.id}, error: SMTP down\n"
    assert [j.id for j in await job_queue.list_jobs_by_type("email.send")] == [doomed.id]
    assert [j.job_type for j in await job_queue.list_jobs_by_type("report.generate")] == [
        "report.generate"
    ]


def test_faq_result_data_examples_build_results() -> None:
    def good() -> JobResult:
        # ✅ GOOD - Useful result data
        return JobResult(
            success=True,
            result_data={
                # Metrics
                "duration_ms": 1234,
                "records_processed": 1000,

                # IDs for audit trail
                "report_id": "rpt_123",
                "file_path": "s3://bucket/report.pdf",

                # Business data
                "total_sales": 50000.00,
                "top_product": "Widget A",

                # Warnings (success but with issues)
                "warnings": ["Record 45 had invalid date"]
            }
        )

    def bad() -> JobResult:
        # ❌ BAD - Useless result data
        return JobResult(
            success=True,
            result_data={"status": "ok"}  # ❌ Not useful
        )

    assert good().result_data["report_id"] == "rpt_123"
    assert bad().result_data == {"status": "ok"}


async def test_faq_a_pending_job_is_cancelled_as_failed_with_job_cancelled() -> None:
    job_queue = MemoryJobQueueAdapter()
    job_id = (await job_queue.enqueue(
        Job(id=uuid4(), queue_name="default", job_type="email.send", payload={})
    )).id

    # Cancel pending job
    cancelled = await job_queue.cancel_job(job_id)

    if cancelled:
        # Job was cancelled, status set to FAILED
        job = await job_queue.get_job(job_id)
        assert job.status == JobStatus.FAILED
        assert job.error_message == "Job cancelled"
    else:
        # Job already running, can't cancel
        print("Job already started, cannot cancel")

    assert cancelled is True


async def test_faq_a_running_job_cannot_be_cancelled(capsys: pytest.CaptureFixture[str]) -> None:
    job_queue = MemoryJobQueueAdapter()
    job_id = (await job_queue.enqueue(
        Job(id=uuid4(), queue_name="default", job_type="email.send", payload={})
    )).id
    await job_queue.dequeue("default", timeout=0)

    # Cancel pending job
    cancelled = await job_queue.cancel_job(job_id)

    if cancelled:
        # Job was cancelled, status set to FAILED
        job = await job_queue.get_job(job_id)
        assert job.status == JobStatus.FAILED
        assert job.error_message == "Job cancelled"
    else:
        # Job already running, can't cancel
        print("Job already started, cannot cancel")

    assert cancelled is False
    assert capsys.readouterr().out == "Job already started, cannot cancel\n"
    assert (await job_queue.get_job(job_id)).status is JobStatus.RUNNING
