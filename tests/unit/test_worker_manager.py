"""WorkerManager and JobExecutor over the memory adapter: outcomes, retries, shutdown, leases; RetryPolicy."""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portico.adapters.job_queue.memory_queue import MemoryJobQueueAdapter
from portico.exceptions import StaleClaimError
from portico.kits.job import JobExecutor, LeasesLostError, RetryPolicy, WorkerManager
from portico.ports.job import Job, JobResult, JobStatus
from portico.ports.job_handler import JobHandler

FAST_RETRY = RetryPolicy(base=0.01, cap=0.05)

Handle = Callable[[Job], Awaitable[JobResult]]


class FnHandler(JobHandler):
    """A handler whose behaviour is an async function; records every on_failure call."""

    def __init__(
        self,
        job_type: str,
        handle: Handle,
        on_failure: Callable[[Job, Exception], Awaitable[None]] | None = None,
    ) -> None:
        self._job_type = job_type
        self._handle = handle
        self._on_failure = on_failure
        self.failures: list[tuple[Job, Exception]] = []

    @property
    def job_type(self) -> str:
        return self._job_type

    async def handle(self, job: Job) -> JobResult:
        return await self._handle(job)

    async def on_failure(self, job: Job, error: Exception) -> None:
        self.failures.append((job, error))
        if self._on_failure is not None:
            await self._on_failure(job, error)


def succeed(**result_data: Any) -> Handle:
    async def handle(job: Job) -> JobResult:
        return JobResult(success=True, result_data=dict(result_data))

    return handle


def new_job(job_type: str = "test.job", queue_name: str = "default", **fields: Any) -> Job:
    fields.setdefault("payload", {})
    return Job(id=uuid4(), queue_name=queue_name, job_type=job_type, **fields)


class FrozenClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def in_status(queue: MemoryJobQueueAdapter, job_id: UUID, *statuses: JobStatus):
    """A predicate for ``eventually``: the job, once it is in one of these statuses."""

    async def check() -> Job | None:
        job = await queue.get_job(job_id)
        return job if job is not None and job.status in statuses else None

    return check


@pytest.fixture
def queue() -> MemoryJobQueueAdapter:
    return MemoryJobQueueAdapter()


@pytest.fixture
async def start_worker(queue: MemoryJobQueueAdapter):
    """Start a WorkerManager (on ``queue`` unless told otherwise); every one is stopped after."""
    started: list[WorkerManager] = []

    async def start(handlers: Any, **options: Any) -> WorkerManager:
        options.setdefault("poll_timeout", 0.5)
        options.setdefault("retry_policy", FAST_RETRY)
        job_queue = options.pop("job_queue", queue)
        manager = WorkerManager(job_queue, handlers, **options)
        await manager.start()
        started.append(manager)
        return manager

    yield start
    for manager in started:
        await manager.stop(grace_period=0)


# -- outcomes -------------------------------------------------------------------------------


async def test_a_successful_job_is_completed_and_its_result_stored(
    queue, start_worker, eventually
) -> None:
    async def handle(job: Job) -> JobResult:
        return JobResult(success=True, result_data={"doubled": job.payload["n"] * 2})

    await start_worker([FnHandler("math.double", handle)])
    job = await queue.enqueue(new_job("math.double", payload={"n": 21}))

    done = await eventually(in_status(queue, job.id, JobStatus.COMPLETED))
    assert done.completed_at is not None and done.retry_count == 0
    assert await queue.get_result(job.id) == {"doubled": 42}
    [attempt] = await queue.get_job_attempts(job.id)
    assert attempt.outcome == "completed"


async def test_a_raising_handler_is_retried_with_backoff_until_it_succeeds(
    queue, start_worker, eventually
) -> None:
    calls = 0

    async def flaky(job: Job) -> JobResult:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"SMTP down (call {calls})")
        return JobResult(success=True, result_data={"calls": calls})

    handler = FnHandler("email.send", flaky)
    await start_worker([handler])
    job = await queue.enqueue(new_job("email.send", max_retries=3))

    done = await eventually(in_status(queue, job.id, JobStatus.COMPLETED))
    assert done.retry_count == 2
    assert await queue.get_result(job.id) == {"calls": 3}

    attempts = await queue.get_job_attempts(job.id)
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert [a.outcome for a in attempts] == ["retrying", "retrying", "completed"]
    assert "ConnectionError: SMTP down (call 1)" in attempts[0].error_message
    assert "ConnectionError: SMTP down (call 2)" in attempts[1].error_message
    assert attempts[2].error_message is None
    # Backoff: each retry waited at least half the policy's first ceiling (0.01 s).
    for failed, retried in zip(attempts, attempts[1:]):
        assert (retried.started_at - failed.finished_at).total_seconds() >= 0.004
    assert len(handler.failures) == 2


async def test_an_always_failing_job_ends_in_dead_letter_with_the_error(
    queue, start_worker, eventually
) -> None:
    async def broken(job: Job) -> JobResult:
        raise RuntimeError("the printer is on fire")

    await start_worker([FnHandler("print.report", broken)])
    job = await queue.enqueue(new_job("print.report", max_retries=2))

    dead = await eventually(in_status(queue, job.id, JobStatus.DEAD_LETTER))
    assert dead.retry_count == 2
    assert dead.failed_at is not None
    assert "RuntimeError" in dead.error_message
    assert "the printer is on fire" in dead.error_message
    attempts = await queue.get_job_attempts(job.id)
    assert [a.outcome for a in attempts] == ["retrying", "retrying", "dead_letter"]
    stats = await queue.get_queue_stats("default")
    assert (stats.dead_letter_count, stats.running_count, stats.retrying_count) == (1, 0, 0)


async def test_a_failed_result_that_recommends_no_retry_fails_at_once(
    queue, start_worker, eventually
) -> None:
    async def invalid(job: Job) -> JobResult:
        return JobResult(
            success=False,
            error=ValueError("invalid email address"),
            result_data={"error_type": "validation", "retry_recommended": False},
        )

    handler = FnHandler("email.send", invalid)
    await start_worker([handler])
    job = await queue.enqueue(new_job("email.send", max_retries=3))

    failed = await eventually(in_status(queue, job.id, JobStatus.FAILED))
    assert failed.retry_count == 0
    assert "ValueError: invalid email address" in failed.error_message
    assert [a.outcome for a in await queue.get_job_attempts(job.id)] == ["failed"]
    assert len(handler.failures) == 1


async def test_a_failed_result_without_an_error_is_still_a_failure(queue, start_worker, eventually) -> None:
    async def quietly_failing(job: Job) -> JobResult:
        return JobResult(success=False)

    await start_worker([FnHandler("quiet", quietly_failing)])
    job = await queue.enqueue(new_job("quiet", max_retries=0))

    dead = await eventually(in_status(queue, job.id, JobStatus.DEAD_LETTER))
    assert dead.error_message


async def test_a_handler_returning_something_other_than_a_job_result_fails_the_job(
    queue, start_worker, eventually
) -> None:
    async def sloppy(job: Job) -> JobResult:
        return {"success": True}  # type: ignore[return-value]

    await start_worker([FnHandler("sloppy", sloppy)])
    job = await queue.enqueue(new_job("sloppy", max_retries=0))

    dead = await eventually(in_status(queue, job.id, JobStatus.DEAD_LETTER))
    assert "JobResult" in dead.error_message


async def test_on_failure_is_called_once_per_failure_with_the_job_and_error(
    queue, start_worker, eventually
) -> None:
    raised: list[Exception] = []

    async def broken(job: Job) -> JobResult:
        error = RuntimeError(f"attempt {job.retry_count + 1}")
        raised.append(error)
        raise error

    handler = FnHandler("broken", broken)
    await start_worker([handler])
    job = await queue.enqueue(new_job("broken", max_retries=2))

    await eventually(in_status(queue, job.id, JobStatus.DEAD_LETTER))
    assert len(handler.failures) == 3
    assert [failed.id for failed, _ in handler.failures] == [job.id] * 3
    assert [failed.retry_count for failed, _ in handler.failures] == [0, 1, 2]
    assert [error for _, error in handler.failures] == raised
    assert all(failed.status is JobStatus.RUNNING for failed, _ in handler.failures)


async def test_on_failure_receives_the_error_of_a_failed_result(queue, start_worker, eventually) -> None:
    error = ConnectionError("SMTP server unavailable")

    async def handle(job: Job) -> JobResult:
        return JobResult(success=False, error=error, result_data={"retry_recommended": False})

    handler = FnHandler("email.send", handle)
    await start_worker([handler])
    job = await queue.enqueue(new_job("email.send"))

    await eventually(in_status(queue, job.id, JobStatus.FAILED))
    assert [(failed.id, seen) for failed, seen in handler.failures] == [(job.id, error)]


async def test_an_on_failure_that_raises_is_logged_and_the_job_ends_as_it_would_have(
    queue, start_worker, eventually, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="portico.worker")

    async def broken(job: Job) -> JobResult:
        raise RuntimeError("handler broke")

    async def not_retriable(job: Job) -> JobResult:
        return JobResult(success=False, error=ValueError("bad"), result_data={"retry_recommended": False})

    async def alerting_is_down(job: Job, error: Exception) -> None:
        raise OSError("alerting service unreachable")

    retried = FnHandler("retried", broken, on_failure=alerting_is_down)
    final = FnHandler("final", not_retriable, on_failure=alerting_is_down)
    await start_worker([retried, final])
    retried_job = await queue.enqueue(new_job("retried", max_retries=1))
    final_job = await queue.enqueue(new_job("final", max_retries=3))

    dead = await eventually(in_status(queue, retried_job.id, JobStatus.DEAD_LETTER))
    failed = await eventually(in_status(queue, final_job.id, JobStatus.FAILED))
    assert dead.retry_count == 1 and "RuntimeError: handler broke" in dead.error_message
    assert failed.retry_count == 0 and "ValueError: bad" in failed.error_message
    assert len(retried.failures) == 2 and len(final.failures) == 1

    logged = [
        record for record in caplog.records
        if record.name == "portico.worker" and "on_failure" in record.getMessage()
    ]
    assert len(logged) == 3
    for record in logged:
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], OSError)
    messages = " ".join(record.getMessage() for record in logged)
    assert str(retried_job.id) in messages and str(final_job.id) in messages


async def test_a_job_of_an_unknown_type_fails_naming_the_type(
    queue, start_worker, eventually
) -> None:
    ran: list[UUID] = []

    async def handle(job: Job) -> JobResult:
        ran.append(job.id)
        return JobResult(success=True)

    await start_worker([FnHandler("known.type", handle)])
    stray = await queue.enqueue(new_job("mystery.type", max_retries=3))
    known = await queue.enqueue(new_job("known.type"))

    failed = await eventually(in_status(queue, stray.id, JobStatus.FAILED))
    assert "mystery.type" in failed.error_message
    assert failed.retry_count == 0
    assert [a.outcome for a in await queue.get_job_attempts(stray.id)] == ["failed"]
    await eventually(in_status(queue, known.id, JobStatus.COMPLETED))
    assert ran == [known.id]


# -- claiming -------------------------------------------------------------------------------


async def test_a_worker_on_several_queues_runs_the_highest_priority_job_first(
    queue, start_worker, eventually
) -> None:
    order: list[str] = []

    async def record(job: Job) -> JobResult:
        order.append(job.payload["name"])
        return JobResult(success=True)

    await queue.enqueue(new_job("rec", "q1", payload={"name": "low"}, priority=1))
    await queue.enqueue(new_job("rec", "q1", payload={"name": "middle"}, priority=5))
    await queue.enqueue(new_job("rec", "q2", payload={"name": "high"}, priority=9))
    await queue.enqueue(new_job("rec", "q3", payload={"name": "elsewhere"}, priority=99))

    await start_worker([FnHandler("rec", record)], concurrency=1, queues=["q1", "q2"])

    await eventually(lambda: len(order) == 3)
    assert order == ["high", "middle", "low"]
    elsewhere = await queue.list_jobs_by_status(JobStatus.PENDING)
    assert [job.queue_name for job in elsewhere] == ["q3"]


async def test_concurrency_n_runs_n_jobs_at_once_and_no_more(queue, start_worker, eventually) -> None:
    n = 4
    running = 0
    most = 0
    all_in = asyncio.Event()

    async def barrier(job: Job) -> JobResult:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running == n:
            all_in.set()
        try:
            # Fails (and so fails the test) unless n jobs get here at the same time.
            await asyncio.wait_for(all_in.wait(), timeout=3)
        finally:
            running -= 1
        return JobResult(success=True)

    jobs = [await queue.enqueue(new_job("barrier", max_retries=0)) for _ in range(2 * n)]
    await start_worker([FnHandler("barrier", barrier)], concurrency=n)

    for job in jobs:
        done = await eventually(in_status(queue, job.id, JobStatus.COMPLETED, JobStatus.DEAD_LETTER))
        assert done.status is JobStatus.COMPLETED, done.error_message
    assert most == n


async def test_many_workers_on_one_queue_run_every_job_exactly_once(
    queue, start_worker, eventually
) -> None:
    executions: Counter[UUID] = Counter()
    running_now: set[UUID] = set()
    overlaps: list[UUID] = []

    async def count(job: Job) -> JobResult:
        if job.id in running_now:
            overlaps.append(job.id)
        running_now.add(job.id)
        executions[job.id] += 1
        await asyncio.sleep(0)
        running_now.discard(job.id)
        return JobResult(success=True)

    total = 500
    ids = [(await queue.enqueue(new_job("count", payload={"n": n}))).id for n in range(total // 2)]
    for _ in range(4):
        await start_worker([FnHandler("count", count)], concurrency=5)
    ids += [(await queue.enqueue(new_job("count", payload={"n": n}))).id for n in range(total // 2, total)]

    async def all_done() -> bool:
        return (await queue.get_queue_stats("default")).completed_count == total

    await eventually(all_done, timeout=15)
    assert len(executions) == total
    assert set(executions) == set(ids)
    assert [job_id for job_id, times in executions.items() if times != 1] == []
    assert overlaps == []


# -- stopping -------------------------------------------------------------------------------


async def test_stop_lets_a_job_in_flight_finish_within_the_grace_period(
    queue, start_worker, eventually
) -> None:
    async def short(job: Job) -> JobResult:
        await asyncio.sleep(0.2)
        return JobResult(success=True)

    manager = await start_worker([FnHandler("short", short)], concurrency=2)
    job = await queue.enqueue(new_job("short"))
    await eventually(in_status(queue, job.id, JobStatus.RUNNING))

    started = time.monotonic()
    await manager.stop(grace_period=2)
    assert time.monotonic() - started < 1.5

    done = await queue.get_job(job.id)
    assert done.status is JobStatus.COMPLETED
    assert not manager.is_running
    assert await queue.list_jobs_by_status(JobStatus.RUNNING) == []


async def test_stop_releases_a_job_that_cannot_finish_in_the_grace_period(
    queue, start_worker, eventually
) -> None:
    async def long(job: Job) -> JobResult:
        await asyncio.sleep(10)
        return JobResult(success=True)

    manager = await start_worker([FnHandler("long", long)], concurrency=2)
    job = await queue.enqueue(new_job("long", max_retries=3))
    await eventually(in_status(queue, job.id, JobStatus.RUNNING))

    started = time.monotonic()
    await manager.stop(grace_period=0.1)
    assert time.monotonic() - started < 1.5

    back = await queue.get_job(job.id)
    assert back.status is JobStatus.PENDING
    assert back.retry_count == 0
    assert back.started_at is None
    [attempt] = await queue.get_job_attempts(job.id)
    assert attempt.outcome == "released"
    assert await queue.list_jobs_by_status(JobStatus.RUNNING) == []
    assert manager.in_flight == []

    # Released, not lost: the next worker runs it.
    await start_worker([FnHandler("long", succeed())])
    done = await eventually(in_status(queue, job.id, JobStatus.COMPLETED))
    assert done.retry_count == 0


async def test_a_released_retry_keeps_its_retry_count(queue, start_worker, eventually) -> None:
    calls = 0

    async def fail_then_hang(job: Job) -> JobResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("first try fails")
        await asyncio.sleep(10)
        return JobResult(success=True)

    manager = await start_worker([FnHandler("hang", fail_then_hang)])
    job = await queue.enqueue(new_job("hang", max_retries=3))

    async def second_attempt_running() -> bool:
        current = await queue.get_job(job.id)
        return current.status is JobStatus.RUNNING and current.retry_count == 1

    await eventually(second_attempt_running)
    await manager.stop(grace_period=0.05)

    back = await queue.get_job(job.id)
    assert back.retry_count == 1
    assert back.status in (JobStatus.RETRYING, JobStatus.PENDING)
    assert back.status.is_waiting
    assert [a.outcome for a in await queue.get_job_attempts(job.id)] == ["retrying", "released"]


async def test_cancelling_run_stops_gracefully_and_lets_a_job_in_flight_finish(
    queue, eventually
) -> None:
    async def short(job: Job) -> JobResult:
        await asyncio.sleep(0.2)
        return JobResult(success=True)

    manager = WorkerManager(queue, [FnHandler("short", short)], grace_period=5, poll_timeout=0.5)
    job = await queue.enqueue(new_job("short"))
    running = asyncio.create_task(manager.run())
    await eventually(in_status(queue, job.id, JobStatus.RUNNING))

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert (await queue.get_job(job.id)).status is JobStatus.COMPLETED
    assert not manager.is_running


async def test_cancelling_run_releases_what_cannot_finish_in_the_grace_period(
    queue, eventually
) -> None:
    async def long(job: Job) -> JobResult:
        await asyncio.sleep(10)
        return JobResult(success=True)

    manager = WorkerManager(queue, [FnHandler("long", long)], grace_period=0.1, poll_timeout=0.5)
    job = await queue.enqueue(new_job("long"))
    running = asyncio.create_task(manager.run())
    await eventually(in_status(queue, job.id, JobStatus.RUNNING))

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    back = await queue.get_job(job.id)
    assert back.status is JobStatus.PENDING and back.retry_count == 0
    assert await queue.list_jobs_by_status(JobStatus.RUNNING) == []


async def test_an_idle_worker_stops_at_once(start_worker) -> None:
    manager = await start_worker([FnHandler("idle", succeed())], concurrency=3, poll_timeout=30)
    assert manager.is_running
    started = time.monotonic()
    await manager.stop(grace_period=5)
    assert time.monotonic() - started < 1
    assert not manager.is_running


# -- time limits and leases -----------------------------------------------------------------


async def test_a_job_over_its_time_limit_fails_with_a_timeout_and_is_retried(
    queue, start_worker, eventually
) -> None:
    calls = 0

    async def slow_once(job: Job) -> JobResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        return JobResult(success=True)

    handler = FnHandler("slow", slow_once)
    await start_worker([handler], job_timeout=0.05)
    job = await queue.enqueue(new_job("slow", max_retries=2))

    done = await eventually(in_status(queue, job.id, JobStatus.COMPLETED))
    assert done.retry_count == 1
    first, second = await queue.get_job_attempts(job.id)
    assert first.outcome == "retrying"
    assert "Timeout" in first.error_message
    assert second.outcome == "completed"
    [(_, error)] = handler.failures
    assert isinstance(error, TimeoutError)


async def test_a_timeout_error_the_handler_raises_is_not_reported_as_the_job_timing_out(
    queue, start_worker, eventually
) -> None:
    async def upstream_timeout(job: Job) -> JobResult:
        raise TimeoutError("upstream API timed out")

    await start_worker([FnHandler("api.call", upstream_timeout)], job_timeout=30)
    job = await queue.enqueue(new_job("api.call", max_retries=0))

    dead = await eventually(in_status(queue, job.id, JobStatus.DEAD_LETTER))
    assert dead.error_message == "TimeoutError: upstream API timed out"


async def test_a_handler_raising_cancelled_error_is_a_failure_not_a_dead_worker(
    queue, start_worker, eventually
) -> None:
    async def poison(job: Job) -> JobResult:
        raise asyncio.CancelledError("raised by the handler, not by a shutdown")

    async def fine(job: Job) -> JobResult:
        return JobResult(success=True)

    manager = await start_worker([FnHandler("poison", poison), FnHandler("fine", fine)], concurrency=2)
    pill = await queue.enqueue(new_job("poison", max_retries=2))

    dead = await eventually(in_status(queue, pill.id, JobStatus.DEAD_LETTER))
    assert dead.retry_count == 2
    assert "CancelledError" in dead.error_message
    assert len(await queue.get_job_attempts(pill.id)) == 3

    # Every slot survived: the worker still runs jobs, as many at once as before.
    assert manager.is_running
    jobs = [await queue.enqueue(new_job("fine")) for _ in range(4)]
    for job in jobs:
        await eventually(in_status(queue, job.id, JobStatus.COMPLETED))


async def test_a_job_rescued_after_its_worker_died_is_run_by_another_worker(
    start_worker, eventually
) -> None:
    queue = MemoryJobQueueAdapter(lease_seconds=0.1)
    job = await queue.enqueue(new_job("orphan", max_retries=3))
    claimed = await queue.dequeue("default", timeout=0)  # a worker claims it, then dies
    assert claimed.id == job.id
    await asyncio.sleep(0.15)  # its lease runs out
    assert await queue.rescue() == [job.id]  # what the maintenance timers do

    await start_worker([FnHandler("orphan", succeed())], job_queue=queue)

    done = await eventually(in_status(queue, job.id, JobStatus.COMPLETED))
    assert done.retry_count == 1
    first, second = await queue.get_job_attempts(job.id)
    assert first.error_message == "worker lost"
    assert second.outcome == "completed"


async def test_heartbeats_keep_a_long_jobs_lease_alive(start_worker, eventually) -> None:
    queue = MemoryJobQueueAdapter(lease_seconds=0.2)

    async def long(job: Job) -> JobResult:
        await asyncio.sleep(0.6)
        return JobResult(success=True)

    await start_worker([FnHandler("long", long)], job_queue=queue, heartbeat_interval=0.05)
    job = await queue.enqueue(new_job("long"))
    await eventually(in_status(queue, job.id, JobStatus.RUNNING))

    rescued: list[UUID] = []
    while (await queue.get_job(job.id)).status is JobStatus.RUNNING:
        rescued += await queue.rescue()
        await asyncio.sleep(0.02)

    assert rescued == []
    done = await queue.get_job(job.id)
    assert done.status is JobStatus.COMPLETED
    assert done.retry_count == 0
    assert len(await queue.get_job_attempts(job.id)) == 1


async def test_a_job_whose_lease_ran_out_is_rescued_and_its_stale_claim_refused() -> None:
    clock = FrozenClock()
    queue = MemoryJobQueueAdapter(lease_seconds=30, clock=clock)
    await queue.enqueue(new_job("manual", max_retries=3))
    job = await queue.dequeue("default", timeout=0)
    assert job is not None and job.status is JobStatus.RUNNING

    clock.advance(10)
    assert await queue.rescue() == []  # the lease still holds
    clock.advance(25)
    assert await queue.rescue() == [job.id]

    with pytest.raises(StaleClaimError):
        await queue.acknowledge(job.id, claim=job)
    with pytest.raises(StaleClaimError):
        await queue.reject(job.id, claim=job, error_message="late")
    with pytest.raises(StaleClaimError):
        await queue.release(job.id, claim=job)
    rescued = await queue.get_job(job.id)
    assert rescued.status is JobStatus.RETRYING
    assert rescued.retry_count == 1
    assert await queue.get_result(job.id) is None


async def test_a_superseded_worker_cannot_record_an_outcome() -> None:
    clock = FrozenClock()
    queue = MemoryJobQueueAdapter(lease_seconds=30, clock=clock)

    async def outlives_its_lease(job: Job) -> JobResult:
        clock.advance(60)  # the worker stalls past its lease...
        assert await queue.rescue() == [job.id]  # ...and the reaper takes the job back
        return JobResult(success=True, result_data={"side_effect": 1})

    executor = JobExecutor(queue, [FnHandler("stall", outlives_its_lease)])
    await queue.enqueue(new_job("stall"))
    claimed = await queue.dequeue("default", timeout=0)

    assert await executor.execute(claimed) is None
    job = await queue.get_job(claimed.id)
    assert job.status is JobStatus.RETRYING
    assert await queue.get_result(claimed.id) is None


# -- configuration --------------------------------------------------------------------------


def test_a_worker_needs_at_least_one_slot_and_one_queue(queue) -> None:
    with pytest.raises(ValueError):
        WorkerManager(queue, [], concurrency=0)
    with pytest.raises(ValueError):
        WorkerManager(queue, [], queues=[])


async def test_a_worker_cannot_be_started_twice(start_worker) -> None:
    manager = await start_worker([])
    with pytest.raises(RuntimeError):
        await manager.start()


# -- retry policy ---------------------------------------------------------------------------


def ceiling(policy: RetryPolicy, retry_number: int) -> float:
    return min(policy.cap, policy.base * 2 ** (retry_number - 1))


def test_retry_delays_grow_with_each_retry() -> None:
    policy = RetryPolicy(base=1, cap=10_000, rng=random.Random(7))
    delays = [policy.delay(n) for n in range(1, 11)]
    assert delays == sorted(delays)
    assert delays[-1] > 100 * delays[0]


def test_each_retry_delay_lies_between_half_its_ceiling_and_the_ceiling() -> None:
    policy = RetryPolicy(base=2, cap=3600, rng=random.Random(3))
    for n in range(1, 30):
        for _ in range(20):
            assert ceiling(policy, n) / 2 <= policy.delay(n) <= ceiling(policy, n)


@given(
    base=st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    cap=st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False),
    retry_number=st.integers(min_value=0, max_value=10**9),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_a_retry_delay_never_exceeds_the_cap(base: float, cap: float, retry_number: int, seed: int) -> None:
    delay = RetryPolicy(base=base, cap=cap, rng=random.Random(seed)).delay(retry_number)
    assert 0 <= delay <= cap


def test_a_hundred_delays_for_the_same_retry_are_spread_out() -> None:
    policy = RetryPolicy(base=2, cap=3600)
    delays = [policy.delay(4) for _ in range(100)]
    assert len(set(delays)) > 90
    assert max(delays) - min(delays) > ceiling(policy, 4) / 8
    assert all(8 <= delay <= 16 for delay in delays)


def test_a_seeded_random_makes_the_delays_reproducible() -> None:
    first = RetryPolicy(base=1, cap=60, rng=random.Random(42))
    second = RetryPolicy(base=1, cap=60, rng=random.Random(42))
    other = RetryPolicy(base=1, cap=60, rng=random.Random(43))
    sequence = [first.delay(n) for n in range(1, 20)]
    assert sequence == [second.delay(n) for n in range(1, 20)]
    assert sequence != [other.delay(n) for n in range(1, 20)]


def test_a_negative_base_or_cap_is_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(base=-1)
    with pytest.raises(ValueError):
        RetryPolicy(cap=-1)


async def test_a_hundred_jobs_failing_at_once_come_back_spread_out_and_capped() -> None:
    clock = FrozenClock()
    queue = MemoryJobQueueAdapter(clock=clock)

    async def broken(job: Job) -> JobResult:
        raise ConnectionError("dependency down")

    executor = JobExecutor(queue, [FnHandler("burst", broken)], retry_policy=RetryPolicy(base=10, cap=20))
    for _ in range(100):
        await queue.enqueue(new_job("burst", queue_name="burst", max_retries=3))
    for job in await queue.dequeue_many("burst", 100):
        await executor.execute(job)

    retrying = await queue.list_jobs_by_status(JobStatus.RETRYING)
    assert len(retrying) == 100
    waits = [(job.scheduled_at - clock.now).total_seconds() for job in retrying]
    assert all(5 <= wait <= 10 for wait in waits)
    assert max(waits) - min(waits) > 1
    assert await queue.dequeue("burst", timeout=0) is None  # none is due before its delay


# -- batch claiming -------------------------------------------------------------------------


class ClaimSpy(MemoryJobQueueAdapter):
    """The memory adapter, recording every claim call; ``gate`` can hold batch claims open."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.batches: list[tuple[int, int]] = []  # (limit asked, jobs claimed)
        self.blocking: list[float] = []  # timeouts of blocking dequeues
        self.gate: asyncio.Event | None = None
        self.claim_started = asyncio.Event()
        self.failures_left = 0

    async def dequeue_many(self, queue_name: Any, limit: int) -> list[Job]:
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("the store is briefly unreachable")
        claimed = await super().dequeue_many(queue_name, limit)
        self.batches.append((limit, len(claimed)))
        self.claim_started.set()
        if self.gate is not None:
            await self.gate.wait()  # claimed, and not yet handed to the worker
        return claimed

    async def dequeue(self, queue_name: Any, timeout: float = 30) -> Job | None:
        self.blocking.append(timeout)
        return await super().dequeue(queue_name, timeout)


def all_finished(queue: MemoryJobQueueAdapter, total: int):
    async def check() -> bool:
        return (await queue.get_queue_stats("default")).completed_count == total

    return check


async def test_a_batch_worker_claims_several_due_jobs_in_one_call(start_worker, eventually) -> None:
    queue = ClaimSpy()
    for n in range(40):
        await queue.enqueue(new_job("quick", payload={"n": n}))

    await start_worker([FnHandler("quick", succeed())], job_queue=queue, concurrency=8, batch_size=8)

    await eventually(all_finished(queue, 40))
    assert max(claimed for _, claimed in queue.batches) == 8
    assert len(queue.batches) < 40
    assert all(limit <= 8 for limit, _ in queue.batches)


async def test_a_batch_worker_never_claims_more_jobs_than_it_has_free_slots(
    start_worker, eventually
) -> None:
    queue = ClaimSpy()
    release = asyncio.Event()

    async def held(job: Job) -> JobResult:
        await release.wait()
        return JobResult(success=True)

    for _ in range(10):
        await queue.enqueue(new_job("held"))
    await start_worker([FnHandler("held", held)], job_queue=queue, concurrency=3, batch_size=10)

    async def three_running() -> bool:
        return (await queue.get_queue_stats("default")).running_count == 3

    await eventually(three_running)
    await asyncio.sleep(0.05)  # time for a wrong extra claim to show
    stats = await queue.get_queue_stats("default")
    assert (stats.running_count, stats.pending_count) == (3, 7)
    assert all(limit <= 3 for limit, _ in queue.batches)

    release.set()
    await eventually(all_finished(queue, 10))


async def test_a_batch_worker_waits_on_a_blocking_dequeue_only_when_nothing_is_due(
    start_worker, eventually
) -> None:
    queue = ClaimSpy()
    await start_worker([FnHandler("late", succeed())], job_queue=queue, concurrency=4,
                       batch_size=4, poll_timeout=30)
    await eventually(lambda: queue.blocking == [30])  # idle: one wait, nothing busy-polled
    assert queue.batches == [(4, 0)]

    job = await queue.enqueue(new_job("late"))
    await eventually(in_status(queue, job.id, JobStatus.COMPLETED), timeout=2)


async def test_a_batch_worker_respects_priority_across_its_queues(start_worker, eventually) -> None:
    queue = MemoryJobQueueAdapter()
    order: list[str] = []

    async def record(job: Job) -> JobResult:
        order.append(job.payload["name"])
        return JobResult(success=True)

    await queue.enqueue(new_job("rec", "q1", payload={"name": "low"}, priority=1))
    await queue.enqueue(new_job("rec", "q2", payload={"name": "high"}, priority=9))
    await queue.enqueue(new_job("rec", "q1", payload={"name": "middle"}, priority=5))
    await start_worker([FnHandler("rec", record)], job_queue=queue, concurrency=1,
                       batch_size=10, queues=["q1", "q2"])

    await eventually(lambda: len(order) == 3)
    assert order == ["high", "middle", "low"]


async def test_many_batch_workers_on_one_queue_run_every_job_exactly_once(
    queue, start_worker, eventually
) -> None:
    executions: Counter[UUID] = Counter()

    async def count(job: Job) -> JobResult:
        executions[job.id] += 1
        await asyncio.sleep(0)
        return JobResult(success=True)

    ids = [(await queue.enqueue(new_job("count", payload={"n": n}))).id for n in range(250)]
    for _ in range(4):
        await start_worker([FnHandler("count", count)], concurrency=5, batch_size=4)
    ids += [(await queue.enqueue(new_job("count", payload={"n": n}))).id for n in range(250, 500)]

    await eventually(all_finished(queue, 500), timeout=15)
    assert set(executions) == set(ids)
    assert [job_id for job_id, times in executions.items() if times != 1] == []


async def test_stopping_a_batch_worker_mid_claim_releases_the_jobs_it_had_not_started(
    start_worker, eventually
) -> None:
    queue = ClaimSpy()
    ran: list[UUID] = []

    async def handle(job: Job) -> JobResult:
        ran.append(job.id)
        return JobResult(success=True)

    jobs = [await queue.enqueue(new_job("held", max_retries=3)) for _ in range(5)]
    queue.gate = asyncio.Event()
    manager = await start_worker([FnHandler("held", handle)], job_queue=queue, concurrency=5,
                                 batch_size=5)
    await asyncio.wait_for(queue.claim_started.wait(), timeout=2)
    assert (await queue.get_queue_stats("default")).running_count == 5

    stopping = asyncio.create_task(manager.stop(grace_period=5))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # the stop waits for the claim under way...
    queue.gate.set()
    await asyncio.wait_for(stopping, timeout=2)

    assert ran == []  # ...and runs none of what it took: all of it goes back
    for job in jobs:
        back = await queue.get_job(job.id)
        assert back.status is JobStatus.PENDING and back.retry_count == 0
        assert [a.outcome for a in await queue.get_job_attempts(job.id)] == ["released"]
    assert await queue.list_jobs_by_status(JobStatus.RUNNING) == []


async def test_stopping_a_batch_worker_lets_jobs_in_flight_finish_and_releases_the_late_ones(
    queue, start_worker, eventually
) -> None:
    async def by_payload(job: Job) -> JobResult:
        await asyncio.sleep(job.payload["seconds"])
        return JobResult(success=True)

    short = [await queue.enqueue(new_job("sleep", payload={"seconds": 0.1})) for _ in range(3)]
    long = await queue.enqueue(new_job("sleep", payload={"seconds": 10}))
    manager = await start_worker([FnHandler("sleep", by_payload)], concurrency=4, batch_size=4)

    async def four_running() -> bool:
        return (await queue.get_queue_stats("default")).running_count == 4

    await eventually(four_running)
    started = time.monotonic()
    await manager.stop(grace_period=0.5)
    assert time.monotonic() - started < 2

    for job in short:
        assert (await queue.get_job(job.id)).status is JobStatus.COMPLETED
    assert (await queue.get_job(long.id)).status is JobStatus.PENDING
    assert await queue.list_jobs_by_status(JobStatus.RUNNING) == []


async def test_a_batch_worker_survives_a_failing_claim(start_worker, eventually, caplog) -> None:
    queue = ClaimSpy()
    queue.failures_left = 1
    job = await queue.enqueue(new_job("quick"))
    await start_worker([FnHandler("quick", succeed())], job_queue=queue, concurrency=2,
                       batch_size=2, poll_timeout=0.05)

    await eventually(in_status(queue, job.id, JobStatus.COMPLETED), timeout=3)
    assert any("claiming a job" in record.getMessage() for record in caplog.records)


async def test_heartbeats_keep_the_leases_of_batch_claimed_jobs_alive(start_worker, eventually) -> None:
    queue = MemoryJobQueueAdapter(lease_seconds=0.2)

    async def long(job: Job) -> JobResult:
        await asyncio.sleep(0.5)
        return JobResult(success=True)

    jobs = [await queue.enqueue(new_job("long")) for _ in range(3)]
    await start_worker([FnHandler("long", long)], job_queue=queue, concurrency=3, batch_size=3,
                       heartbeat_interval=0.05)

    rescued: list[UUID] = []
    while (await queue.get_queue_stats("default")).completed_count < 3:
        rescued += await queue.rescue()
        await asyncio.sleep(0.02)
    assert rescued == []
    for job in jobs:
        assert len(await queue.get_job_attempts(job.id)) == 1


def test_a_batch_size_below_one_is_refused(queue) -> None:
    with pytest.raises(ValueError):
        WorkerManager(queue, [], batch_size=0)


async def test_a_batch_worker_claims_the_next_batch_while_the_last_outcomes_are_being_written(
    start_worker, eventually
) -> None:
    class SlowWrites(ClaimSpy):
        """Acknowledgements wait at a gate: the outcome writes of a batch, still under way."""

        def __init__(self) -> None:
            super().__init__()
            self.writes = asyncio.Event()
            self.waiting_writes = 0

        async def acknowledge(self, job_id: UUID, result_data: Any = None, *, claim: Any = None) -> Job:
            self.waiting_writes += 1
            await self.writes.wait()
            return await super().acknowledge(job_id, result_data, claim=claim)

    queue = SlowWrites()
    ran = 0

    async def count(job: Job) -> JobResult:
        nonlocal ran
        ran += 1
        return JobResult(success=True)

    for _ in range(8):
        await queue.enqueue(new_job("quick"))
    await start_worker([FnHandler("quick", count)], job_queue=queue, concurrency=4, batch_size=4)

    # The first four ran and wait for their writes; the next four are claimed meanwhile...
    await eventually(lambda: queue.waiting_writes == 4 and sum(n for _, n in queue.batches) == 8)
    assert ran == 4  # ...but not started: no more than four handlers at a time
    assert (await queue.get_queue_stats("default")).running_count == 8

    queue.writes.set()
    await eventually(all_finished(queue, 8))
    assert ran == 8


async def test_a_batch_worker_keeps_filling_a_free_slot_while_long_jobs_hold_the_others(
    queue, start_worker, eventually
) -> None:
    release = asyncio.Event()

    async def by_kind(job: Job) -> JobResult:
        if job.payload["long"]:
            await release.wait()
        return JobResult(success=True)

    long = [await queue.enqueue(new_job("mixed", payload={"long": True}, priority=1)) for _ in range(3)]
    short = [await queue.enqueue(new_job("mixed", payload={"long": False})) for _ in range(10)]
    await start_worker([FnHandler("mixed", by_kind)], concurrency=4, batch_size=4)

    for job in short:  # one slot, claimed one job at a time, while three stay taken
        await eventually(in_status(queue, job.id, JobStatus.COMPLETED))
    for job in long:
        assert (await queue.get_job(job.id)).status is JobStatus.RUNNING
    release.set()
    await eventually(all_finished(queue, 13))


# -- a store that stops answering -----------------------------------------------------------


class FlakyStore(MemoryJobQueueAdapter):
    """The memory adapter with an outage on demand: heartbeats that fail or hang, claims that fail."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.failing_heartbeats = 0  # the next this many heartbeats raise
        self.hanging = False  # heartbeats never answer
        self.down = False  # claims raise (heartbeats too)
        self.heartbeats: list[bool] = []  # each heartbeat asked, and whether it succeeded
        self.claims = 0

    async def heartbeat(self, claims: Any) -> list[UUID]:
        if self.hanging:
            await asyncio.Event().wait()
        if self.down or self.failing_heartbeats:
            self.failing_heartbeats = max(0, self.failing_heartbeats - 1)
            self.heartbeats.append(False)
            raise ConnectionError("the store is down")
        self.heartbeats.append(True)
        return await super().heartbeat(claims)

    async def dequeue(self, queue_name: Any, timeout: float = 30) -> Job | None:
        self._claim_attempt()
        return await super().dequeue(queue_name, timeout)

    async def dequeue_many(self, queue_name: Any, limit: int) -> list[Job]:
        self._claim_attempt()
        return await super().dequeue_many(queue_name, limit)

    def _claim_attempt(self) -> None:
        self.claims += 1
        if self.down:
            raise ConnectionError("the store is down")


def held_until(gate: asyncio.Event) -> Handle:
    async def handle(job: Job) -> JobResult:
        await gate.wait()
        return JobResult(success=True)

    return handle


@pytest.mark.parametrize("batch_size", [1, 2])
async def test_a_worker_whose_heartbeats_fail_for_a_whole_lease_stops_claiming_and_reports_it(
    start_worker, eventually, caplog, batch_size
) -> None:
    store = FlakyStore(lease_seconds=0.3)
    gate = asyncio.Event()
    manager = await start_worker([FnHandler("held", held_until(gate))], job_queue=store,
                                 concurrency=2, batch_size=batch_size, heartbeat_interval=0.05)
    first = await store.enqueue(new_job("held"))
    await eventually(in_status(store, first.id, JobStatus.RUNNING))
    await eventually(lambda: True in store.heartbeats)
    assert manager.healthy

    store.failing_heartbeats = 10**6  # the claims still work: only the leases cannot be kept
    began = time.monotonic()
    reason = await asyncio.wait_for(manager.wait_unhealthy(), timeout=3)

    assert 0.3 - 0.1 <= time.monotonic() - began < 1.5  # a lease after the last good heartbeat
    assert not manager.healthy and not manager.is_running
    assert "heartbeat(s) in a row failed" in reason
    assert "(last error: ConnectionError: the store is down)" in reason
    assert any(r.levelno == logging.ERROR and "worker unhealthy" in r.getMessage() for r in caplog.records)
    # A slot is free and a job is due, but nothing more is claimed.
    later = await store.enqueue(new_job("held"))
    gate.set()
    await eventually(in_status(store, first.id, JobStatus.COMPLETED))
    await asyncio.sleep(0.3)
    assert (await store.get_job(later.id)).status is JobStatus.PENDING


async def test_heartbeats_that_fail_now_and_then_between_good_ones_keep_the_worker_working(
    start_worker, eventually, caplog
) -> None:
    store = FlakyStore(lease_seconds=0.5)
    gate = asyncio.Event()
    manager = await start_worker([FnHandler("held", held_until(gate))], job_queue=store,
                                 concurrency=2, heartbeat_interval=0.05)
    job = await store.enqueue(new_job("held"))
    await eventually(in_status(store, job.id, JobStatus.RUNNING))

    # Two failures in a row, then a good one, again and again for three leases' time.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        store.failing_heartbeats = 2
        await eventually(lambda: store.failing_heartbeats == 0 and store.heartbeats[-1])

    assert manager.healthy and manager.is_running
    assert store.heartbeats.count(False) >= 10
    assert await store.rescue() == []  # the lease held throughout
    gate.set()
    done = await eventually(in_status(store, job.id, JobStatus.COMPLETED))
    assert done.retry_count == 0
    after = await store.enqueue(new_job("held"))
    await eventually(in_status(store, after.id, JobStatus.COMPLETED))
    messages = [r.getMessage() for r in caplog.records]
    assert any("heartbeat failed (ConnectionError: the store is down)" in m for m in messages)
    assert any("heartbeats work again after 2 failure(s)" in m for m in messages)


async def test_a_heartbeat_that_never_answers_makes_the_worker_unhealthy_after_a_lease(
    start_worker, eventually
) -> None:
    store = FlakyStore(lease_seconds=0.3)
    gate = asyncio.Event()
    manager = await start_worker([FnHandler("held", held_until(gate))], job_queue=store,
                                 heartbeat_interval=0.05)
    job = await store.enqueue(new_job("held"))
    await eventually(in_status(store, job.id, JobStatus.RUNNING))

    store.hanging = True
    reason = await asyncio.wait_for(manager.wait_unhealthy(), timeout=3)
    assert "last error: no answer" in reason
    gate.set()


async def test_run_stops_at_once_and_raises_when_the_worker_becomes_unhealthy(eventually) -> None:
    store = FlakyStore(lease_seconds=0.3)
    manager = WorkerManager(store, [FnHandler("held", held_until(asyncio.Event()))],
                            heartbeat_interval=0.05, poll_timeout=0.1, grace_period=30)
    job = await store.enqueue(new_job("held", max_retries=3))
    running = asyncio.create_task(manager.run())
    await eventually(in_status(store, job.id, JobStatus.RUNNING))

    store.failing_heartbeats = 10**6
    with pytest.raises(LeasesLostError, match="in a row failed"):
        await asyncio.wait_for(running, timeout=3)  # no 30 s grace period for lost claims
    # The job was given back unrun (the store still took writes); nothing is left running.
    back = await store.get_job(job.id)
    assert back.status is JobStatus.PENDING and back.retry_count == 0
    assert [a.outcome for a in await store.get_job_attempts(job.id)] == ["released"]


@pytest.mark.parametrize("batch_size", [1, 2])
async def test_an_idle_worker_rides_out_a_store_outage_longer_than_a_lease_backing_off_its_claims(
    start_worker, eventually, caplog, batch_size
) -> None:
    store = FlakyStore(lease_seconds=0.2)
    manager = await start_worker([FnHandler("quick", succeed())], job_queue=store, concurrency=2,
                                 batch_size=batch_size, heartbeat_interval=0.05, poll_timeout=0.1)
    store.down = True
    before = store.claims
    await asyncio.sleep(0.8)  # four leases

    failed = store.claims - before
    # Each claimer waits a poll timeout (0.1 s) after a failure: about 8 tries each, not a spin.
    assert 2 <= failed <= 2 * 12
    assert manager.healthy and manager.is_running  # it held no lease, so it lost none
    assert any("claiming a job from default failed" in r.getMessage() for r in caplog.records)

    store.down = False
    job = await store.enqueue(new_job("quick"))
    await eventually(in_status(store, job.id, JobStatus.COMPLETED))
