"""The behaviour every JobQueueAdapter must show, run against each adapter in ADAPTERS."""
from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from asgiref.sync import async_to_sync

from portico.exceptions import (
    DuplicateJobError,
    InvalidJobStateError,
    JobNotFoundError,
    StaleClaimError,
)
from portico.ports.job import JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


# -- enqueue -----------------------------------------------------------------------------


async def test_enqueue_stores_a_pending_job_with_a_utc_creation_time(queue, new_job):
    before = utcnow()
    job = await queue.enqueue(new_job(payload={"recipient": "a@example.com"}, metadata={"m": [1]}))
    assert job.status is JobStatus.PENDING
    assert job.created_at is not None and job.created_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=5) <= job.created_at <= utcnow() + timedelta(seconds=5)
    stored = await queue.get_job(job.id)
    assert stored == job
    assert stored.payload == {"recipient": "a@example.com"}
    assert stored.metadata == {"m": [1]}


async def test_a_job_with_a_time_to_run_is_stored_as_scheduled(queue, new_job):
    when = utcnow() + timedelta(hours=1)
    job = await queue.enqueue(new_job(scheduled_at=when))
    assert job.status is JobStatus.SCHEDULED
    assert (await queue.get_job(job.id)).scheduled_at == when


async def test_enqueueing_an_existing_id_raises_and_changes_nothing(queue, new_job):
    job = await queue.enqueue(new_job(payload={"v": "first"}))
    with pytest.raises(DuplicateJobError):
        await queue.enqueue(new_job(id=job.id, payload={"v": "second"}))
    assert (await queue.get_job(job.id)).payload == {"v": "first"}
    assert (await queue.get_queue_stats("default")).enqueued_total == 1


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"user_id": uuid4()}, "user_id"),
        ({"when": datetime.now(UTC)}, "when"),
        ({"tags": {"a", "b"}}, "tags"),
        ({"ratio": float("nan")}, "ratio"),
        ({"nested": {"deep": [1, object()]}}, "deep"),
        ({1: "int key"}, "1"),
        ({"text": "nul \x00 byte"}, "text"),
    ],
    ids=["uuid", "datetime", "set", "nan", "nested-object", "int-key", "nul-byte"],
)
async def test_a_payload_that_is_not_json_is_rejected_naming_the_key_and_nothing_is_stored(
    queue, new_job, payload, named
):
    job = new_job(payload=payload)
    with pytest.raises(ValueError, match=named):
        await queue.enqueue(job)
    assert await queue.get_job(job.id) is None
    assert (await queue.get_queue_stats("default")).enqueued_total == 0


async def test_a_naive_scheduled_time_is_rejected_and_nothing_is_stored(queue, new_job):
    job = new_job(scheduled_at=datetime.now() + timedelta(hours=1))  # noqa: DTZ005 - the point
    with pytest.raises(ValueError, match="naive"):
        await queue.enqueue(job)
    assert await queue.get_job(job.id) is None


async def test_an_oversized_payload_is_rejected_and_nothing_is_stored(queue, new_job):
    job = new_job(payload={"blob": "x" * (2 * 1024 * 1024)})
    with pytest.raises(ValueError, match="limit"):
        await queue.enqueue(job)
    assert await queue.get_job(job.id) is None


async def test_nul_bytes_in_names_are_rejected(queue, new_job):
    with pytest.raises(ValueError):
        await queue.enqueue(new_job(job_type="bad\x00type"))
    with pytest.raises(ValueError):
        await queue.enqueue(new_job(queue_name=""))


async def test_enqueue_many_stores_all_or_none(queue, new_job):
    good = [new_job(payload={"i": i}) for i in range(3)]
    with pytest.raises(ValueError):
        await queue.enqueue_many([*good, new_job(payload={"bad": object()})])
    for job in good:
        assert await queue.get_job(job.id) is None
    stored = await queue.enqueue_many(good)
    assert [job.id for job in stored] == [job.id for job in good]
    assert (await queue.get_queue_stats("default")).pending_count == 3


# -- dequeue -----------------------------------------------------------------------------


async def test_dequeue_claims_highest_priority_first_then_oldest(queue, new_job):
    low = await queue.enqueue(new_job(priority=1))
    first_high = await queue.enqueue(new_job(priority=10))
    second_high = await queue.enqueue(new_job(priority=10))
    middle = await queue.enqueue(new_job(priority=5))
    order = [(await queue.dequeue("default", timeout=0)).id for _ in range(4)]
    assert order == [first_high.id, second_high.id, middle.id, low.id]
    assert await queue.dequeue("default", timeout=0) is None


async def test_dequeue_marks_the_job_running_with_a_start_time(queue, new_job):
    job = await queue.enqueue(new_job())
    claimed = await queue.dequeue("default", timeout=0)
    assert claimed.id == job.id
    assert claimed.status is JobStatus.RUNNING
    assert claimed.started_at is not None and claimed.started_at.utcoffset() == timedelta(0)
    assert await queue.get_job(job.id) == claimed


async def test_dequeue_only_takes_from_the_named_queues(queue, new_job):
    await queue.enqueue(new_job(queue_name="emails"))
    assert await queue.dequeue("reports", timeout=0) is None
    assert (await queue.dequeue("emails", timeout=0)).queue_name == "emails"


async def test_a_worker_serving_several_queues_takes_the_best_job_across_them(queue, new_job):
    low = await queue.enqueue(new_job(queue_name="a", priority=1))
    high = await queue.enqueue(new_job(queue_name="b", priority=9))
    await queue.enqueue(new_job(queue_name="c", priority=50))
    assert (await queue.dequeue(["a", "b"], timeout=0)).id == high.id
    assert (await queue.dequeue(("a", "b"), timeout=0)).id == low.id


async def test_a_future_scheduled_job_is_not_claimed_until_its_time(queue, new_job):
    job = await queue.enqueue(new_job(scheduled_at=utcnow() + timedelta(seconds=0.5)))
    assert await queue.dequeue("default", timeout=0) is None
    started = time.monotonic()
    claimed = await queue.dequeue("default", timeout=5)
    assert claimed is not None and claimed.id == job.id
    assert time.monotonic() - started < 3


async def test_a_due_scheduled_job_is_claimed(queue, new_job):
    job = await queue.enqueue(new_job(scheduled_at=utcnow() - timedelta(seconds=1)))
    assert job.status is JobStatus.SCHEDULED
    assert (await queue.dequeue("default", timeout=0)).id == job.id


async def test_dequeue_waits_for_the_timeout_then_returns_none(queue):
    started = time.monotonic()
    assert await queue.dequeue("default", timeout=0.3) is None
    assert 0.25 <= time.monotonic() - started < 3


async def test_a_waiting_dequeue_wakes_as_soon_as_work_arrives(queue, new_job):
    waiter = asyncio.create_task(queue.dequeue("default", timeout=10))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    started = time.monotonic()
    job = await queue.enqueue(new_job())
    claimed = await asyncio.wait_for(waiter, timeout=5)
    assert claimed.id == job.id
    assert time.monotonic() - started < 1.0


async def test_a_cancelled_dequeue_leaves_no_job_claimed(queue, new_job):
    waiter = asyncio.create_task(queue.dequeue("default", timeout=10))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    job = await queue.enqueue(new_job())
    await asyncio.sleep(0.1)
    assert (await queue.get_job(job.id)).status is JobStatus.PENDING


async def test_many_concurrent_workers_never_claim_a_job_twice(queue, new_job):
    jobs = await queue.enqueue_many([new_job(payload={"i": i}) for i in range(200)])
    claimed: list = []

    async def worker() -> None:
        while True:
            job = await queue.dequeue("default", timeout=0.2)
            if job is None:
                return
            claimed.append(job.id)
            await queue.acknowledge(job.id, claim=job)

    await asyncio.gather(*(worker() for _ in range(16)))
    assert sorted(map(str, claimed)) == sorted(str(job.id) for job in jobs)
    stats = await queue.get_queue_stats("default")
    assert (stats.completed_count, stats.pending_count, stats.running_count) == (200, 0, 0)


def test_the_adapter_works_from_one_event_loop_after_another(make_queue, new_job):
    queue = make_queue()
    for _ in range(3):
        job = asyncio.run(queue.enqueue(new_job()))
        claimed = asyncio.run(queue.dequeue("default", timeout=1))
        assert claimed.id == job.id
        asyncio.run(queue.acknowledge(job.id, claim=claimed))
    assert asyncio.run(queue.get_queue_stats("default")).completed_count == 3


def test_the_adapter_works_under_async_to_sync(make_queue, new_job):
    queue = make_queue()
    job = async_to_sync(queue.enqueue)(new_job())
    claimed = async_to_sync(queue.dequeue)("default", 1)
    assert claimed.id == job.id
    async_to_sync(queue.acknowledge)(job.id, {"ok": True}, claim=claimed)
    assert async_to_sync(queue.get_result)(job.id) == {"ok": True}


def test_a_dequeue_waiting_in_one_event_loop_is_woken_by_an_enqueue_from_another(make_queue, new_job):
    queue = make_queue()
    outcome: dict = {}

    def wait_in_own_loop() -> None:
        started = time.monotonic()
        outcome["job"] = asyncio.run(queue.dequeue("default", timeout=10))
        outcome["waited"] = time.monotonic() - started

    thread = threading.Thread(target=wait_in_own_loop)
    thread.start()
    time.sleep(0.2)
    job = async_to_sync(queue.enqueue)(new_job())
    thread.join(timeout=10)
    assert outcome["job"].id == job.id
    assert outcome["waited"] < 2.0


# -- acknowledge -------------------------------------------------------------------------


async def test_acknowledge_completes_the_job_and_keeps_its_result(queue, new_job):
    job = await queue.enqueue(new_job())
    claimed = await queue.dequeue("default", timeout=0)
    done = await queue.acknowledge(job.id, {"message_id": "msg_1"}, claim=claimed)
    assert done.status is JobStatus.COMPLETED
    assert done.completed_at is not None and done.completed_at >= claimed.started_at
    assert await queue.get_result(job.id) == {"message_id": "msg_1"}
    attempts = await queue.get_job_attempts(job.id)
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "completed")]


async def test_acknowledge_of_an_unknown_id_raises(queue):
    with pytest.raises(JobNotFoundError):
        await queue.acknowledge(uuid4())


async def test_acknowledge_of_a_job_not_running_raises_and_changes_nothing(queue, new_job):
    job = await queue.enqueue(new_job())
    with pytest.raises(InvalidJobStateError, match="pending"):
        await queue.acknowledge(job.id)
    assert await queue.get_job(job.id) == job


async def test_a_second_acknowledge_is_refused(queue, new_job):
    await queue.enqueue(new_job())
    claimed = await queue.dequeue("default", timeout=0)
    await queue.acknowledge(claimed.id, claim=claimed)
    with pytest.raises(InvalidJobStateError):
        await queue.acknowledge(claimed.id, claim=claimed)
    assert (await queue.get_queue_stats("default")).completed_total == 1


# -- reject ------------------------------------------------------------------------------


async def test_reject_with_retries_left_retries_the_job(queue, new_job):
    await queue.enqueue(new_job(max_retries=2))
    claimed = await queue.dequeue("default", timeout=0)
    job = await queue.reject(claimed.id, requeue=True, error_message="SMTP down", claim=claimed)
    assert (job.status, job.retry_count, job.error_message) == (JobStatus.RETRYING, 1, "SMTP down")
    again = await queue.dequeue("default", timeout=0)
    assert again.id == job.id and again.retry_count == 1


async def test_reject_with_retries_exhausted_moves_the_job_to_dead_letter(queue, new_job):
    job = await queue.enqueue(new_job(max_retries=3, retry_count=3))
    claimed = await queue.dequeue("default", timeout=0)
    dead = await queue.reject(job.id, requeue=True, error_message="Still failing", claim=claimed)
    assert dead.status is JobStatus.DEAD_LETTER
    assert dead.failed_at is not None
    assert dead.error_message == "Still failing"
    assert dead.retry_count == 3


async def test_reject_without_requeue_fails_the_job_for_good(queue, new_job):
    await queue.enqueue(new_job(max_retries=5))
    claimed = await queue.dequeue("default", timeout=0)
    failed = await queue.reject(claimed.id, requeue=False, error_message="Invalid email", claim=claimed)
    assert (failed.status, failed.retry_count) == (JobStatus.FAILED, 0)
    assert failed.failed_at is not None and failed.error_message == "Invalid email"


async def test_a_job_with_no_retries_dead_letters_on_first_failure(queue, new_job):
    await queue.enqueue(new_job(max_retries=0))
    claimed = await queue.dequeue("default", timeout=0)
    assert (await queue.reject(claimed.id, claim=claimed)).status is JobStatus.DEAD_LETTER


async def test_reject_with_a_delay_holds_the_retry_until_then(queue, new_job):
    await queue.enqueue(new_job())
    claimed = await queue.dequeue("default", timeout=0)
    job = await queue.reject(claimed.id, error_message="later", delay=0.5, claim=claimed)
    assert job.status is JobStatus.RETRYING
    assert await queue.dequeue("default", timeout=0) is None
    again = await queue.dequeue("default", timeout=5)
    assert again is not None and again.id == job.id


async def test_reject_may_fail_a_job_that_is_still_waiting(queue, new_job):
    job = await queue.enqueue(new_job(max_retries=3, retry_count=3))
    dead = await queue.reject(job.id, requeue=True, error_message="Still failing")
    assert dead.status is JobStatus.DEAD_LETTER


async def test_reject_of_a_finished_job_raises_and_changes_nothing(queue, new_job):
    await queue.enqueue(new_job())
    claimed = await queue.dequeue("default", timeout=0)
    done = await queue.acknowledge(claimed.id, claim=claimed)
    with pytest.raises(InvalidJobStateError):
        await queue.reject(claimed.id, error_message="late")
    assert await queue.get_job(claimed.id) == done
    with pytest.raises(JobNotFoundError):
        await queue.reject(uuid4())


async def test_error_text_with_nul_bytes_is_stored_cleaned(queue, new_job):
    await queue.enqueue(new_job())
    claimed = await queue.dequeue("default", timeout=0)
    job = await queue.reject(claimed.id, requeue=False, error_message="bad\x00byte", claim=claimed)
    assert "\x00" not in job.error_message and job.error_message.startswith("bad")


# -- cancel and requeue ------------------------------------------------------------------


async def test_cancel_fails_a_waiting_job_with_job_cancelled(queue, new_job):
    pending = await queue.enqueue(new_job())
    scheduled = await queue.enqueue(new_job(scheduled_at=utcnow() + timedelta(hours=1)))
    for job in (pending, scheduled):
        assert await queue.cancel_job(job.id) is True
        cancelled = await queue.get_job(job.id)
        assert cancelled.status is JobStatus.FAILED
        assert cancelled.error_message == "Job cancelled"
        assert cancelled.failed_at is not None
    assert await queue.dequeue("default", timeout=0) is None


async def test_cancel_of_a_retrying_job_succeeds(queue, new_job):
    await queue.enqueue(new_job())
    claimed = await queue.dequeue("default", timeout=0)
    await queue.reject(claimed.id, delay=60, claim=claimed)
    assert await queue.cancel_job(claimed.id) is True


async def test_cancel_of_a_running_finished_or_unknown_job_returns_false(queue, new_job):
    await queue.enqueue(new_job())
    claimed = await queue.dequeue("default", timeout=0)
    assert await queue.cancel_job(claimed.id) is False
    assert (await queue.get_job(claimed.id)).status is JobStatus.RUNNING
    await queue.acknowledge(claimed.id, claim=claimed)
    assert await queue.cancel_job(claimed.id) is False
    assert await queue.cancel_job(uuid4()) is False


async def test_requeue_sends_a_dead_letter_job_back_with_its_history_kept(queue, new_job):
    await queue.enqueue(new_job(max_retries=0))
    claimed = await queue.dequeue("default", timeout=0)
    await queue.reject(claimed.id, error_message="boom", claim=claimed)
    job = await queue.requeue_job(claimed.id)
    assert (job.status, job.retry_count, job.error_message, job.failed_at) == (
        JobStatus.PENDING, 0, None, None,
    )
    attempts = await queue.get_job_attempts(job.id)
    assert [(a.outcome, a.error_message) for a in attempts] == [("dead_letter", "boom")]
    assert (await queue.dequeue("default", timeout=0)).id == job.id


async def test_requeue_of_a_cancelled_job_makes_it_runnable_again(queue, new_job):
    job = await queue.enqueue(new_job())
    await queue.cancel_job(job.id)
    assert (await queue.requeue_job(job.id)).status is JobStatus.PENDING


async def test_requeue_of_a_job_in_another_state_raises_and_changes_nothing(queue, new_job):
    job = await queue.enqueue(new_job())
    with pytest.raises(InvalidJobStateError):
        await queue.requeue_job(job.id)
    assert await queue.get_job(job.id) == job
    with pytest.raises(JobNotFoundError):
        await queue.requeue_job(uuid4())


# -- leases ------------------------------------------------------------------------------


async def test_release_gives_a_running_job_back_without_counting_a_retry(queue, new_job):
    await queue.enqueue(new_job())
    claimed = await queue.dequeue("default", timeout=0)
    back = await queue.release(claimed.id, claim=claimed)
    assert (back.status, back.retry_count, back.started_at) == (JobStatus.PENDING, 0, None)
    assert (await queue.dequeue("default", timeout=0)).id == claimed.id
    outcomes = [a.outcome for a in await queue.get_job_attempts(claimed.id)]
    assert outcomes == ["released", None]


async def test_rescue_retries_a_running_job_whose_lease_ran_out(make_queue, new_job, eventually):
    queue = make_queue(lease_seconds=0.2)
    await queue.enqueue(new_job())
    claimed = await queue.dequeue("default", timeout=0)
    assert await queue.rescue() == []
    rescued = await eventually(queue.rescue, timeout=5)
    assert rescued == [claimed.id]
    job = await queue.get_job(claimed.id)
    assert (job.status, job.retry_count, job.error_message) == (JobStatus.RETRYING, 1, "worker lost")


async def test_rescue_of_a_job_that_keeps_killing_its_worker_ends_in_dead_letter(
    make_queue, new_job, eventually
):
    queue = make_queue(lease_seconds=0.1)
    await queue.enqueue(new_job(max_retries=2))
    for _ in range(3):
        claimed = await queue.dequeue("default", timeout=2)
        assert claimed is not None
        await eventually(queue.rescue, timeout=5)
    job = await queue.get_job(claimed.id)
    assert (job.status, job.retry_count) == (JobStatus.DEAD_LETTER, 2)


async def test_a_late_acknowledgement_after_rescue_is_refused(make_queue, new_job, eventually):
    queue = make_queue(lease_seconds=0.1)
    await queue.enqueue(new_job())
    first = await queue.dequeue("default", timeout=0)
    await eventually(queue.rescue, timeout=5)
    second = await queue.dequeue("default", timeout=2)
    assert second.id == first.id
    with pytest.raises(StaleClaimError):
        await queue.acknowledge(first.id, {"from": "first"}, claim=first)
    with pytest.raises(StaleClaimError):
        await queue.reject(first.id, error_message="late", claim=first)
    assert (await queue.get_job(first.id)).status is JobStatus.RUNNING
    await queue.acknowledge(second.id, {"from": "second"}, claim=second)
    assert await queue.get_result(first.id) == {"from": "second"}
    assert (await queue.get_queue_stats("default")).completed_total == 1


async def test_heartbeats_keep_a_live_claim_from_being_rescued(make_queue, new_job):
    queue = make_queue(lease_seconds=0.3)
    await queue.enqueue(new_job())
    claimed = await queue.dequeue("default", timeout=0)
    for _ in range(8):
        await asyncio.sleep(0.1)
        assert await queue.heartbeat([claimed]) == [claimed.id]
        assert await queue.rescue() == []
    await queue.acknowledge(claimed.id, claim=claimed)
    assert await queue.heartbeat([claimed]) == []


# -- reading -----------------------------------------------------------------------------


async def test_jobs_can_be_listed_by_status_and_by_type(queue, new_job):
    a = await queue.enqueue(new_job(job_type="email.send"))
    b = await queue.enqueue(new_job(job_type="report.generate"))
    c = await queue.enqueue(new_job(job_type="email.send"))
    claimed = await queue.dequeue("default", timeout=0)
    await queue.reject(claimed.id, requeue=False, claim=claimed)
    assert [j.id for j in await queue.list_jobs_by_type("email.send")] == [a.id, c.id]
    assert [j.id for j in await queue.list_jobs_by_status(JobStatus.PENDING)] == [b.id, c.id]
    assert [j.id for j in await queue.list_jobs_by_status(JobStatus.FAILED)] == [a.id]
    assert len(await queue.list_jobs_by_status(JobStatus.PENDING, limit=1)) == 1


async def test_get_job_of_an_unknown_id_is_none(queue):
    assert await queue.get_job(uuid4()) is None


async def test_queue_stats_count_every_status_and_the_lifetime_totals(queue, new_job):
    for _ in range(3):
        await queue.enqueue(new_job(max_retries=0))
    await queue.enqueue(new_job(scheduled_at=utcnow() + timedelta(hours=1)))
    await queue.enqueue(new_job(queue_name="other"))
    one = await queue.dequeue("default", timeout=0)
    await queue.acknowledge(one.id, claim=one)
    two = await queue.dequeue("default", timeout=0)
    await queue.reject(two.id, claim=two)  # no retries: dead letter
    await queue.dequeue("default", timeout=0)  # left running

    stats = await queue.get_queue_stats("default")
    assert (stats.pending_count, stats.running_count, stats.completed_count) == (0, 1, 1)
    assert (stats.failed_count, stats.dead_letter_count, stats.scheduled_count) == (0, 1, 1)
    assert stats.retrying_count == 0
    assert (stats.enqueued_total, stats.completed_total, stats.dead_lettered_total) == (4, 1, 1)
    assert stats.total_processed == 2
    assert stats.failure_rate == pytest.approx(0.5)

    everything = {s.queue_name: s for s in await queue.get_all_queue_stats()}
    assert set(everything) == {"default", "other"}
    assert everything["other"].pending_count == 1
    assert everything["default"] == stats or everything["default"].running_count == 1


async def test_queue_stats_of_an_unknown_queue_are_zero(queue):
    stats = await queue.get_queue_stats("nothing-here")
    assert stats.queue_name == "nothing-here"
    assert stats.total_processed == 0 and stats.failure_rate == 0.0
    assert stats.pending_count == stats.running_count == 0


async def test_latency_is_the_age_of_the_oldest_due_job(queue, new_job):
    assert (await queue.get_queue_stats("default")).latency_seconds == 0.0
    await queue.enqueue(new_job())
    await asyncio.sleep(0.3)
    assert (await queue.get_queue_stats("default")).latency_seconds >= 0.25
