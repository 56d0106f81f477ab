"""The one log line per job outcome that JobExecutor writes: its text, its fields as record attributes, its level."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from uuid import uuid4

import pytest

from portico.adapters.job_queue.memory_queue import MemoryJobQueueAdapter
from portico.kits.job import JobExecutor, RetryPolicy
from portico.ports.job import Job, JobResult, JobStatus
from portico.ports.job_handler import JobHandler

FIELDS = ("job_id", "job_type", "queue", "attempt", "outcome", "duration")


class Outcome(JobHandler):
    """Succeeds, or fails with ``payload["error"]`` when the payload names one."""

    job_type = "report.build"

    async def handle(self, job: Job) -> JobResult:
        if "error" in job.payload:
            return JobResult(success=False, error=ValueError(job.payload["error"]))
        return JobResult(success=True)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)  # as a real handler would: the message must format
        self.records.append(record)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(f"test.outcomes.{uuid4().hex}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    logger.handlers.clear()


@pytest.fixture
def records(logger: logging.Logger) -> Records:
    handler = Records()
    logger.addHandler(handler)
    return handler


async def claimed(queue: MemoryJobQueueAdapter, **payload: str) -> Job:
    await queue.enqueue(Job(id=uuid4(), queue_name="reports", job_type="report.build",
                            payload=payload, max_retries=2))
    job = await queue.dequeue("reports", timeout=0)
    assert job is not None
    return job


async def test_a_completed_job_is_one_info_line_whose_record_carries_its_fields(logger, records):
    queue = MemoryJobQueueAdapter()
    job = await claimed(queue)

    done = await JobExecutor(queue, [Outcome()], logger=logger).execute(job)

    assert done is not None and done.status is JobStatus.COMPLETED
    (record,) = records.records
    assert record.levelno == logging.INFO and record.name == logger.name
    assert record.getMessage().startswith(
        f"job_id={job.id} job_type=report.build queue=reports attempt=1 outcome=completed duration=")
    assert record.getMessage().endswith("s")
    assert (record.job_id, record.job_type, record.queue, record.attempt, record.outcome) == (
        str(job.id), "report.build", "reports", 1, "completed")
    assert 0 <= record.duration < 5
    assert record.funcName == "_log" and record.pathname.endswith("worker.py")


async def test_a_failed_job_is_one_warning_line_naming_the_error(logger, records):
    queue = MemoryJobQueueAdapter()
    job = await claimed(queue, error="no data for March")

    done = await JobExecutor(queue, [Outcome()], logger=logger,
                             retry_policy=RetryPolicy(base=0, cap=0)).execute(job)

    assert done is not None and done.status is JobStatus.RETRYING
    (record,) = records.records
    assert record.levelno == logging.WARNING
    assert (record.outcome, record.attempt) == ("retrying", 1)
    assert " outcome=retrying " in record.getMessage()
    assert record.getMessage().endswith(" error='ValueError: no data for March'")
    assert all(hasattr(record, field) for field in FIELDS)


async def test_a_logger_above_info_gets_no_completed_lines_but_still_the_failures(logger, records):
    logger.setLevel(logging.WARNING)
    queue = MemoryJobQueueAdapter()
    executor = JobExecutor(queue, [Outcome()], logger=logger, retry_policy=RetryPolicy(base=0, cap=0))

    await executor.execute(await claimed(queue))
    await executor.execute(await claimed(queue, error="boom"))

    assert [record.outcome for record in records.records] == ["retrying"]


async def test_the_outcome_line_goes_through_the_log_record_factory_in_use(logger, records):
    made: list[logging.LogRecord] = []
    default = logging.getLogRecordFactory()

    def tagging(*args, **kwargs) -> logging.LogRecord:
        record = default(*args, **kwargs)
        record.tag = "from the factory"
        made.append(record)
        return record

    logging.setLogRecordFactory(tagging)
    try:
        queue = MemoryJobQueueAdapter()
        await JobExecutor(queue, [Outcome()], logger=logger).execute(await claimed(queue))
    finally:
        logging.setLogRecordFactory(default)

    (record,) = records.records
    assert record in made and record.tag == "from the factory" and record.outcome == "completed"


async def test_a_filter_on_the_logger_still_sees_and_can_drop_the_outcome_line(logger, records):
    seen: list[str] = []

    def only_failures(record: logging.LogRecord) -> bool:
        seen.append(record.outcome)
        return record.outcome != "completed"

    logger.addFilter(only_failures)
    queue = MemoryJobQueueAdapter()
    await JobExecutor(queue, [Outcome()], logger=logger).execute(await claimed(queue))

    assert seen == ["completed"] and records.records == []
