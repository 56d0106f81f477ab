"""Claims and acknowledgements from an event loop run on the loop's own PostgreSQL connections."""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from django.db import OperationalError, connection

from jobs.queue import DatabaseJobQueueAdapter
from portico.ports.job import Job, JobStatus

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.fail("the event loop's own connections are PostgreSQL's: run these tests with "
                    "DATABASE_URL=postgres://... (make test does)", pytrace=False)


@pytest.fixture
async def store(empty_store):
    adapter = DatabaseJobQueueAdapter(poll_interval=0.05)
    await adapter.initialize()
    yield adapter
    await adapter.close()


def new_job(**fields: Any) -> Job:
    return Job(id=uuid4(), queue_name="default", job_type="test.job", payload={}, **fields)


def sessions() -> set[int]:
    """Backend pids of every session on the test database but the one asking."""
    params = {k: v for k, v in connection.get_connection_params().items()
              if k not in ("cursor_factory", "context")}
    with psycopg.connect(**params, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()").fetchall()
    return {pid for (pid,) in rows}


def terminate(pid: int) -> None:
    params = {k: v for k, v in connection.get_connection_params().items()
              if k not in ("cursor_factory", "context")}
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 5
    while pid in sessions():
        assert time.monotonic() < deadline, f"backend {pid} is still there"
        time.sleep(0.02)


def own_pids(store: DatabaseJobQueueAdapter) -> dict[str, int]:
    own = store._loop_connections(asyncio.get_running_loop())
    return {role: conn.info.backend_pid for role, conn in own.connections.items()}


async def test_claims_and_acknowledgements_go_on_while_every_adapter_thread_is_busy(store):
    await store.enqueue_many([new_job() for _ in range(5)])
    release = threading.Event()
    busy = [store._pool().submit(release.wait, 10) for _ in range(store._threads)]
    try:
        claimed = await asyncio.wait_for(store.dequeue_many("default", 5), 5)
        done = await asyncio.wait_for(
            asyncio.gather(*(store.acknowledge(job.id, claim=job) for job in claimed)), 5)
    finally:
        release.set()
    assert len(claimed) == 5 and all(job.status is JobStatus.COMPLETED for job in done)
    assert all(future.result() for future in busy)
    assert set(own_pids(store)) == {"claim", "acknowledge"}


async def test_statements_arriving_together_share_one_new_connection_per_role(store):
    await store.enqueue_many([new_job() for _ in range(16)])
    before = sessions()

    claimed = await asyncio.gather(*(store.dequeue("default", timeout=0) for _ in range(16)))
    await asyncio.gather(*(store.acknowledge(job.id, claim=job) for job in claimed))

    assert len({job.id for job in claimed}) == 16
    assert sessions() - before == set(own_pids(store).values())
    assert len(own_pids(store)) == 2


async def test_an_acknowledgement_on_a_connection_the_server_dropped_is_sent_again_on_a_new_one(store):
    await store.enqueue_many([new_job() for _ in range(2)])
    first, second = await store.dequeue_many("default", 2)
    await store.acknowledge(first.id, claim=first)
    dropped = own_pids(store)["acknowledge"]

    terminate(dropped)
    done = await store.acknowledge(second.id, claim=second)

    assert done.status is JobStatus.COMPLETED
    assert (await store.get_job(second.id)).status is JobStatus.COMPLETED
    assert own_pids(store)["acknowledge"] != dropped


async def test_a_claim_on_a_dropped_connection_fails_as_a_database_error_and_the_next_reconnects(store):
    await store.enqueue_many([new_job() for _ in range(2)])
    (first,) = await store.dequeue_many("default", 1)
    dropped = own_pids(store)["claim"]

    terminate(dropped)
    with pytest.raises(OperationalError):
        await store.dequeue_many("default", 1)
    (second,) = await store.dequeue_many("default", 1)

    assert second.id != first.id and second.status is JobStatus.RUNNING
    assert own_pids(store)["claim"] != dropped


def test_close_sync_closes_the_connections_of_a_loop_that_has_ended(empty_store):
    store = DatabaseJobQueueAdapter()
    store.enqueue_many_sync([new_job() for _ in range(3)])

    async def work() -> set[int]:
        claimed = await store.dequeue_many("default", 3)
        await asyncio.gather(*(store.acknowledge(job.id, claim=job) for job in claimed))
        return set(own_pids(store).values())

    pids = asyncio.run(work())
    assert len(pids) == 2 and pids <= sessions()
    store.close_sync()

    deadline = time.monotonic() + 5
    while pids & sessions():
        assert time.monotonic() < deadline, "the loop's connections outlived close_sync()"
        time.sleep(0.02)
    assert [job.status for job in store.list_jobs_by_status_sync(JobStatus.COMPLETED)] == [
        JobStatus.COMPLETED] * 3
