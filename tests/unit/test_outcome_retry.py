"""JobExecutor keeps trying to write an outcome while the store fails, so a job that ran is recorded once."""
from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest

from portico.adapters.job_queue.memory_queue import MemoryJobQueueAdapter
from portico.kits.job import JobExecutor
from portico.ports.job import Job, JobResult, JobStatus
from portico.ports.job_handler import JobHandler


class Counted(JobHandler):
    job_type = "count.me"

    def __init__(self) -> None:
        self.runs = 0

    async def handle(self, job: Job) -> JobResult:
        self.runs += 1
        return JobResult(success="fail" not in job.payload, error=None if "fail" not in job.payload
                         else ValueError("no"))


class Flaky(MemoryJobQueueAdapter):
    """Acknowledgements and rejections fail like a cut database connection, ``failures`` times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.writes = 0

    def _maybe_fail(self) -> None:
        self.writes += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("server closed the connection unexpectedly")

    async def acknowledge(self, job_id, result_data=None, *, claim=None):
        self._maybe_fail()
        return await super().acknowledge(job_id, result_data, claim=claim)

    async def reject(self, job_id, requeue=True, error_message=None, *, delay=None, claim=None):
        self._maybe_fail()
        return await super().reject(job_id, requeue, error_message, delay=delay, claim=claim)


async def claimed(queue: Flaky, **payload) -> Job:
    await queue.enqueue(Job(id=uuid4(), queue_name="default", job_type="count.me", payload=payload))
    job = await queue.dequeue("default", timeout=0)
    assert job is not None
    return job


@pytest.mark.parametrize("payload, status", [({}, JobStatus.COMPLETED), ({"fail": 1}, JobStatus.RETRYING)])
def test_an_outcome_write_that_fails_a_few_times_is_written_once_and_the_job_not_run_again(payload, status, caplog):
    async def scenario() -> None:
        queue, handler = Flaky(failures=3), Counted()
        executor = JobExecutor(queue, [handler], outcome_retry_seconds=5)
        recorded = await executor.execute(await claimed(queue, **payload))
        assert recorded is not None and recorded.status is status
        assert handler.runs == 1 and queue.writes == 4
        assert (await queue.get_job(recorded.id)).status is status

    asyncio.run(scenario())
    assert sum("trying again" in r.getMessage() for r in caplog.records) == 3


def test_a_store_that_stays_down_past_the_retry_window_gets_the_error():
    async def scenario() -> None:
        queue = Flaky(failures=10_000)
        executor = JobExecutor(queue, [Counted()], outcome_retry_seconds=0.3)
        job = await claimed(queue)
        began = asyncio.get_running_loop().time()
        with pytest.raises(ConnectionError):
            await executor.execute(job)
        assert asyncio.get_running_loop().time() - began < 2
        assert (await queue.get_job(job.id)).status is JobStatus.RUNNING  # the lease brings it back

    asyncio.run(scenario())


def test_a_refusal_is_not_retried():
    async def scenario() -> None:
        queue = Flaky(failures=0)
        executor = JobExecutor(queue, [Counted()], outcome_retry_seconds=5)
        job = await claimed(queue)
        await queue.release(job.id, claim=job)  # the claim goes stale before the outcome
        assert await executor.execute(job) is None
        assert queue.writes == 1

    asyncio.run(scenario())


def test_the_retry_window_defaults_to_the_queues_lease():
    queue = MemoryJobQueueAdapter()
    assert JobExecutor(queue, []).outcome_retry_seconds == queue.lease_seconds
    assert JobExecutor(queue, [], outcome_retry_seconds=2).outcome_retry_seconds == 2
