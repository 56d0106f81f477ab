"""Worker presence (portico_worker) with real processes: built-in and Celery workers count while they live."""
from __future__ import annotations

import signal
import socket
import time

import pytest
from django.db import connection

from jobs.models import WorkerRecord
from jobs.queue import DatabaseJobQueueAdapter
from tests.integration import celery_harness as harness
from tests.integration import test_worker_process as worker_process
from tests.support import settings as child_settings
from tests.support.waiting import wait_for

# Built-in worker processes and the store they use (tests/integration/test_worker_process.py).
store, start_worker = worker_process.store, worker_process.start_worker
all_completed, new_job = worker_process.all_completed, worker_process.new_job
# Celery processes (tests/integration/celery_harness.py).
broker, rabbitmq_vhost, cluster = harness.broker, harness.rabbitmq_vhost, harness.cluster
no_executions = harness.no_executions
pytestmark = pytest.mark.django_db(transaction=True)

# The workers' lease: a worker is live while its last heartbeat is younger than this.
LEASE = child_settings.PORTICO_LEASE_SECONDS
HEARTBEAT = child_settings.PORTICO_HEARTBEAT_SECONDS


@pytest.fixture
def presence(empty_store):
    """The job store as /metrics reads it, with the workers' lease."""
    adapter = DatabaseJobQueueAdapter(lease_seconds=LEASE)
    yield adapter
    adapter.close_sync()


def rows_of(pid: int) -> list[WorkerRecord]:
    return list(WorkerRecord.objects.filter(pid=pid))


def live(presence: DatabaseJobQueueAdapter, *queues: str) -> tuple[int, ...]:
    counts = presence.live_workers_sync()
    return tuple(counts.get(queue, 0) for queue in queues)


def refreshed(pid: int, since) -> bool:
    return any(row.last_seen_at > since for row in rows_of(pid))


# -- the built-in worker --------------------------------------------------------------------


def test_a_builtin_worker_counts_for_each_of_its_queues_while_it_runs_and_sigterm_removes_it(
    presence, start_worker
):
    first = start_worker("--queues", "p-mail,p-shared")
    second = start_worker("--queues", "p-shared")
    wait_for(lambda: live(presence, "p-mail", "p-shared") == (1, 2), 5, "both workers to register")

    [row] = rows_of(first.pid)
    assert (row.kind, row.queues, row.hostname) == ("builtin", ["p-mail", "p-shared"], socket.gethostname())
    host, pid, token = row.worker_id.rsplit(":", 2)
    assert (host, pid, len(token)) == (socket.gethostname(), str(first.pid), 8)
    assert row.worker_id != rows_of(second.pid)[0].worker_id
    # Each process heartbeats for itself, every PORTICO_HEARTBEAT_SECONDS.
    wait_for(lambda: refreshed(first.pid, row.last_seen_at) and refreshed(second.pid, row.last_seen_at),
             HEARTBEAT * 6, "both workers' rows to be refreshed")

    first.signal(signal.SIGTERM)
    assert first.wait_exit(15) == 0
    assert rows_of(first.pid) == []  # deleted on the way out, not left to age
    assert live(presence, "p-mail", "p-shared") == (0, 1)
    second.signal(signal.SIGTERM)
    assert second.wait_exit(15) == 0
    assert live(presence, "p-mail", "p-shared") == (0, 0)


def test_a_killed_builtin_worker_stops_counting_once_its_last_heartbeat_is_a_lease_old(
    presence, start_worker
):
    worker = start_worker("--queues", "p-killed")
    wait_for(lambda: live(presence, "p-killed") == (1,), 5, "the worker to register")

    worker.process.send_signal(signal.SIGKILL)
    worker.wait_exit(10)
    killed = time.monotonic()
    [row] = rows_of(worker.pid)  # nobody said goodbye
    assert live(presence, "p-killed") == (1,)

    wait_for(lambda: live(presence, "p-killed") == (0,), LEASE + 3, "the dead worker to stop counting")
    assert time.monotonic() - killed >= LEASE - HEARTBEAT - 0.5
    assert rows_of(worker.pid) == [row]  # still there, for prune to forget later


def test_a_worker_that_cannot_record_its_presence_logs_it_and_runs_jobs_all_the_same(
    presence, store, start_worker
):
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE portico_worker RENAME TO portico_worker_away")
    try:
        worker = start_worker("--queues", "p-blind")
        wait_for(lambda: "could not record worker" in worker.output, 10, "the failed write to be logged")
        job = store.enqueue_sync(new_job(queue_name="p-blind"))
        wait_for(all_completed(store, [job]), 15, "the job to complete")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE portico_worker_away RENAME TO portico_worker")

    wait_for(lambda: live(presence, "p-blind") == (1,), 5, "the worker to register once it can")
    assert "recording worker" in worker.output and "works again" in worker.output
    assert worker.process.poll() is None
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(15) == 0


# -- Celery ---------------------------------------------------------------------------------

# Presence does not depend on the broker: Redis only, to keep the suite short.
celery = pytest.mark.parametrize("broker", ["redis"], indirect=True)


@celery
def test_a_celery_worker_counts_for_the_portico_queues_it_consumes_until_it_shuts_down(
    presence, cluster
):
    worker = cluster.worker(concurrency=2, queues="portico.default,portico.other,portico.maintenance")
    upkeep = cluster.worker(concurrency=1, queues="portico.maintenance")
    cluster.beat()
    wait_for(lambda: live(presence, "default", "other") == (1, 1), 5, "the worker to register")

    # One row: the worker's main process; not its pool processes, the upkeep worker or beat.
    [row] = WorkerRecord.objects.all()
    assert (row.pid, row.kind, row.queues) == (worker.process.pid, "celery", ["default", "other"])
    assert "maintenance" not in presence.live_workers_sync()
    wait_for(lambda: refreshed(worker.process.pid, row.last_seen_at), HEARTBEAT * 6,
             "the worker's row to be refreshed")

    worker.process.send_signal(signal.SIGTERM)  # warm shutdown
    assert worker.process.wait(timeout=20) == 0
    assert rows_of(worker.process.pid) == []
    assert live(presence, "default", "other") == (0, 0)
    assert upkeep.process.poll() is None


@celery
def test_a_killed_celery_worker_stops_counting_once_its_last_heartbeat_is_a_lease_old(
    presence, cluster
):
    worker = cluster.worker(concurrency=1, queues="portico.default")
    wait_for(lambda: live(presence, "default") == (1,), 5, "the worker to register")

    worker.kill()  # the main process and its pool, SIGKILL
    killed = time.monotonic()
    assert live(presence, "default") == (1,)
    wait_for(lambda: live(presence, "default") == (0,), LEASE + 3, "the dead worker to stop counting")
    assert time.monotonic() - killed >= LEASE - HEARTBEAT - 0.5
    assert len(rows_of(worker.process.pid)) == 1
