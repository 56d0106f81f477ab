"""Concurrent acknowledgements share statements, and each caller still gets its own job or error."""
from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from django.db import connection

from jobs.queue import DatabaseJobQueueAdapter
from portico.exceptions import (
    InvalidJobError,
    InvalidJobStateError,
    JobNotFoundError,
    StaleClaimError,
)
from portico.ports.job import Job, JobStatus

pytestmark = pytest.mark.django_db(transaction=True)


class CountingStatements(DatabaseJobQueueAdapter):
    """The adapter, counting the batched acknowledgement writes (on a thread or on the event
    loop's own connection) and their sizes."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.batches: list[int] = []

    def _acknowledge_each_sync(self, items):
        self.batches.append(len(items))
        return super()._acknowledge_each_sync(items)

    async def _acknowledge_each_on_loop(self, loop, items):  # PostgreSQL, claimed jobs
        self.batches.append(len(items))
        return await super()._acknowledge_each_on_loop(loop, items)


@pytest.fixture
async def store(empty_store):
    adapter = CountingStatements(poll_interval=0.05)
    await adapter.initialize()
    yield adapter
    await adapter.close()


def new_job(**fields: Any) -> Job:
    return Job(id=uuid4(), queue_name="default", job_type="test.job", payload={}, **fields)


async def counter_drift(store: DatabaseJobQueueAdapter) -> dict:
    """counter_drift_sync on a thread of its own (the ORM refuses the event loop's thread)."""

    def check() -> dict:
        try:
            return store.counter_drift_sync()
        finally:
            connection.close()

    return await asyncio.to_thread(check)


async def claim(store: DatabaseJobQueueAdapter, count: int) -> list[Job]:
    await store.enqueue_many([new_job() for _ in range(count)])
    return await store.dequeue_many("default", count)


async def test_acknowledgements_arriving_together_are_written_in_a_few_statements(store):
    claims = await claim(store, 50)

    done = await asyncio.gather(*(
        store.acknowledge(job.id, {"n": n}, claim=job) for n, job in enumerate(claims)))

    assert [job.id for job in done] == [job.id for job in claims]
    assert all(job.status is JobStatus.COMPLETED for job in done)
    assert [await store.get_result(job.id) for job in claims] == [{"n": n} for n in range(50)]
    assert sum(store.batches) == 50
    assert len(store.batches) <= 2  # the first alone at most, then the rest together
    assert (await store.get_queue_stats("default")).completed_count == 50


async def test_each_caller_in_a_batch_gets_its_own_precise_error(store):
    good, stale, twice, bad_result = await claim(store, 4)
    waiting = await store.enqueue(new_job())
    superseded = replace(stale, started_at=stale.started_at - timedelta(seconds=1))

    outcomes = await asyncio.gather(
        store.acknowledge(good.id, {"ok": True}, claim=good),
        store.acknowledge(stale.id, claim=superseded),
        store.acknowledge(uuid4()),
        store.acknowledge(waiting.id),
        store.acknowledge(twice.id, claim=twice),
        store.acknowledge(twice.id, claim=twice),
        store.acknowledge(bad_result.id, {"when": object()}, claim=bad_result),
        return_exceptions=True,
    )

    completed, stale_error, unknown, not_running, first, second, invalid = outcomes
    assert completed.status is JobStatus.COMPLETED and completed.id == good.id
    assert isinstance(stale_error, StaleClaimError)
    assert isinstance(unknown, JobNotFoundError)
    assert isinstance(not_running, InvalidJobStateError) and "pending" in str(not_running)
    # The same job twice: one completes it, the other is refused as it would be alone.
    assert first.status is JobStatus.COMPLETED
    assert isinstance(second, InvalidJobStateError) and "completed" in str(second)
    assert isinstance(invalid, InvalidJobError) and "when" in str(invalid)

    assert (await store.get_job(stale.id)).status is JobStatus.RUNNING
    assert (await store.get_job(waiting.id)).status is JobStatus.PENDING
    assert (await store.get_job(bad_result.id)).status is JobStatus.RUNNING
    assert await counter_drift(store) == {}


async def test_a_cancelled_caller_does_not_undo_or_block_the_others(store):
    claims = await claim(store, 5)
    calls = [asyncio.ensure_future(store.acknowledge(job.id, claim=job)) for job in claims]
    calls[0].cancel()

    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert all(job.status is JobStatus.COMPLETED for job in outcomes[1:])
    # The cancelled caller's write may or may not have been sent; either way it is whole.
    first = await store.get_job(claims[0].id)
    assert first.status in (JobStatus.COMPLETED, JobStatus.RUNNING)
    assert await counter_drift(store) == {}
