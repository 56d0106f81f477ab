"""portico_worker through a database outage: a TCP proxy in front of PostgreSQL cuts or freezes it.

The proxy stands in for a PostgreSQL restart without touching the shared server: open
connections are reset and new ones refused until it is restored; frozen, it answers
nothing at all, like a lost network route. The test itself talks to PostgreSQL directly,
so it watches the job table throughout.
"""
from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from uuid import UUID

import pytest
from django.db import connection

from jobs.worker import UNHEALTHY_EXIT_WAIT
from portico.lifecycle import WORKER_LOST
from portico.ports.job import Job, JobStatus
from tests.integration import test_worker_process as worker_process
from tests.support import settings as child_settings
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for

# Built-in worker processes and the store they use (tests/integration/test_worker_process.py).
store, start_worker = worker_process.store, worker_process.start_worker
all_completed, executions, new_job = (
    worker_process.all_completed, worker_process.executions, worker_process.new_job)
pytestmark = pytest.mark.django_db(transaction=True)

LEASE = child_settings.PORTICO_LEASE_SECONDS  # 3 s in the workers
HEARTBEAT = child_settings.PORTICO_HEARTBEAT_SECONDS


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    db = connection.settings_dict
    with TcpProxy(db["HOST"], int(db["PORT"])) as running:
        yield running


@pytest.fixture
def start_proxied_worker(start_worker, proxy: TcpProxy):
    """Start portico_worker processes whose every database connection goes through the proxy."""
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@127.0.0.1:{proxy.port}/{db['NAME']}"

    def start(*args: str, **env: str):
        return start_worker(*args, DATABASE_URL=url,
                            DJANGO_SETTINGS_MODULE="tests.support.outage_settings", **env)

    return start


def naps(count: int, *seconds: float, **fields) -> list[Job]:
    return [new_job("test.nap", payload={"seconds": list(seconds)}, **fields) for _ in range(count)]


def started(job_ids: list[UUID]):
    return lambda: {row[0] for row in executions()} >= set(job_ids)


def runs_per_attempt(jobs: list[Job]) -> Counter[tuple[UUID, int]]:
    """(job id, retry count) -> how many runs of that attempt reached the handler."""
    wanted = {job.id for job in jobs}
    return Counter((job_id, retries) for job_id, retries, _ in executions() if job_id in wanted)


def test_a_worker_rides_out_an_outage_shorter_than_its_lease_and_completes_every_job_once(
    store, proxy, start_proxied_worker
):
    # Quick jobs first, so that every database thread of the worker has a connection to
    # lose; then four jobs nap through the outage holding every slot; eight more wait.
    warming = store.enqueue_many_sync(naps(200, 0.0, priority=9))
    holding = store.enqueue_many_sync(naps(4, 3.0, priority=5))
    waiting = store.enqueue_many_sync(naps(8, 0.1))
    worker = start_proxied_worker("--concurrency", "4", "--batch", "4")
    # An idle worker on a queue of its own claims, and fails, all through the outage.
    idle = start_proxied_worker("--queues", "idle", "--concurrency", "2", "--batch", "1")
    wait_for(all_completed(store, warming), 15, "the quick jobs to complete")
    wait_for(started([job.id for job in holding]), 15, "the four holding jobs to start")

    assert proxy.cut() > 0
    wait_for(lambda: "heartbeat failed" in worker.output, 5, "a heartbeat to fail")
    outage = 1.2  # well inside the lease: 3 s, renewed every 0.5 s
    time.sleep(outage - HEARTBEAT)
    assert store.get_job_sync(holding[0].id).status is JobStatus.RUNNING
    proxy.restore()
    assert proxy.refused > 0

    late = store.enqueue_sync(new_job("test.nap", queue_name="idle", payload={"seconds": [0]}))
    wait_for(all_completed(store, holding + waiting + [late]), 20, "every job to complete")
    # Outcomes written after the outage went through connections it had broken: each
    # thread checks its own before using it again, so none was lost.
    jobs = warming + holding + waiting + [late]
    assert runs_per_attempt(jobs) == {(job.id, 0): 1 for job in jobs}  # each ran once, first try
    for job in jobs:
        assert [a.outcome for a in store.get_job_attempts_sync(job.id)] == ["completed"]
    assert worker_process.running_jobs(store) == []

    assert "heartbeats work again" in worker.output
    # The idle worker backed off between failed claims (one a second per slot), not a spin.
    failed_claims = idle.output.count("claiming a job from idle failed")
    assert 1 <= failed_claims <= 2 * (outage + 3)
    for process in (worker, idle):
        assert process.process.poll() is None
        process.signal(signal.SIGTERM)
        assert process.wait_exit(15) == 0


def test_a_worker_cut_off_longer_than_its_lease_exits_3_and_a_new_worker_finishes_every_job(
    store, proxy, start_proxied_worker
):
    # Two jobs nap far longer than the outage on their first attempt (none on a retry).
    holding = store.enqueue_many_sync(naps(2, 60.0, 0.0, priority=5, max_retries=3))
    waiting = store.enqueue_many_sync(naps(4, 0.1))
    first = start_proxied_worker("--concurrency", "2", "--batch", "2")
    wait_for(started([job.id for job in holding]), 15, "the two holding jobs to start")

    proxy.cut()
    cut_at = time.monotonic()
    assert first.wait_exit(LEASE + 12) == 3
    assert LEASE - HEARTBEAT <= time.monotonic() - cut_at
    assert "heartbeat(s) in a row failed" in first.output
    assert "portico_worker giving up, exit status 3" in first.output
    # Its claims are abandoned as they were: still running, until their leases are rescued.
    assert [store.get_job_sync(job.id).status for job in holding] == [JobStatus.RUNNING] * 2
    assert all(store.get_job_sync(job.id).status is JobStatus.PENDING for job in waiting)

    proxy.restore()
    second = start_proxied_worker("--concurrency", "2", "--batch", "2")
    jobs = holding + waiting
    wait_for(all_completed(store, jobs), 20, "every job to complete on the new worker")

    # No attempt ran twice: the holding jobs ran once more after their rescue, the rest once.
    assert runs_per_attempt(jobs) == {
        **{(job.id, 0): 1 for job in holding}, **{(job.id, 1): 1 for job in holding},
        **{(job.id, 0): 1 for job in waiting}}
    for job in holding:
        attempts = store.get_job_attempts_sync(job.id)
        assert [(a.outcome, a.error_message) for a in attempts] == [
            ("retrying", WORKER_LOST), ("completed", None)]
    assert {pid for _, _, pid in executions() if pid != first.pid} == {second.pid}
    assert worker_process.running_jobs(store) == []
    second.signal(signal.SIGTERM)
    assert second.wait_exit(15) == 0


def test_a_worker_whose_database_stops_answering_exits_3_after_a_lease_without_hanging(
    store, proxy, start_proxied_worker
):
    holding = store.enqueue_many_sync(naps(2, 60.0, 0.0, priority=5, max_retries=3))
    worker = start_proxied_worker("--concurrency", "2", "--batch", "2")
    wait_for(started([job.id for job in holding]), 15, "the two holding jobs to start")

    proxy.freeze()  # connections stay open and nothing answers: heartbeats hang, not fail
    frozen_at = time.monotonic()
    # A lease to give up; then stopping waits on the same silent database, so the process
    # leaves after UNHEALTHY_EXIT_WAIT whatever it was waiting for.
    assert worker.wait_exit(LEASE + UNHEALTHY_EXIT_WAIT + 8) == 3
    assert LEASE - HEARTBEAT <= time.monotonic() - frozen_at
    output = worker.output
    assert "(last error: no answer)" in output
    assert "portico_worker giving up, exit status 3" in output
    assert f"could not stop within {UNHEALTHY_EXIT_WAIT:g}s; exiting with status 3" in output

    # Nothing is lost: the abandoned jobs' leases ran out long ago, and a rescue takes them.
    assert [store.get_job_sync(job.id).status for job in holding] == [JobStatus.RUNNING] * 2
    assert sorted(store.rescue_sync()) == sorted(job.id for job in holding)
    assert [store.get_job_sync(job.id).status for job in holding] == [JobStatus.RETRYING] * 2
