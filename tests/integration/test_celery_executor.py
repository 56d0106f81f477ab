"""Jobs on real Celery workers, Redis and RabbitMQ: completion, order, timing, dispatch on commit."""
from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from kombu import Connection

from jobs import dispatch
from jobs.models import JobRecord
from jobs.queue import DatabaseJobQueueAdapter
from jobs.services import job_service
from portico.ports.job import JobStatus
from tests.integration import celery_harness as harness
from tests.integration.celery_harness import Broker, eventually, executions, make_jobs

# The shared fixtures: brokers, Celery processes, the execution log.
broker, rabbitmq_vhost, celery_app = harness.broker, harness.rabbitmq_vhost, harness.celery_app
cluster, dispatch_on_commit = harness.cluster, harness.dispatch_on_commit
no_executions = harness.no_executions
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.celery, pytest.mark.postgres]


def completed(store: DatabaseJobQueueAdapter, count: int, queue: str = "default"):
    return lambda: store.get_queue_stats_sync(queue).completed_count == count


def test_jobs_enqueued_with_dispatch_on_commit_complete_on_a_celery_worker(
    store, cluster, dispatch_on_commit
):
    cluster.worker(concurrency=2)
    jobs = store.enqueue_many_sync(make_jobs(40))
    jobs += [store.enqueue_sync(job) for job in make_jobs(5)]

    eventually(completed(store, 45), what="45 completed jobs")
    runs = executions([job.id for job in jobs])
    assert sorted(run[0] for run in runs) == sorted(job.id for job in jobs)
    stats = store.get_queue_stats_sync("default")
    assert (stats.pending_count, stats.running_count, stats.completed_total) == (0, 0, 45)


def test_a_job_created_through_job_service_rings_from_the_stores_own_thread(
    empty_store, broker: Broker, dispatch_on_commit, settings
):
    settings.PORTICO_HANDLERS = ["tests.support.handlers.RecordHandler"]
    service = job_service(DatabaseJobQueueAdapter())
    try:
        asyncio.run(service.create_job("test.record", {"via": "JobService"}, queue_name="other"))
    finally:
        service.job_queue.close_sync()
    eventually(lambda: broker.waiting("portico.other") == 1, what="the doorbell arriving")


def test_jobs_run_in_strict_priority_order_whatever_order_their_doorbells_arrive_in(
    store, cluster, dispatch_on_commit
):
    cluster.worker(concurrency=1)
    blocker = store.enqueue_sync(make_jobs(job_type="test.sleep", payload={"seconds": 1.5})[0])
    eventually(lambda: executions([blocker.id]), what="the blocking job starting")
    # One commit, one doorbell each, lowest priority first, while the only slot is busy.
    priorities = [0, 5, 1, 9, 3, 5, 0, 7, 9, 2, 5, 1]
    jobs = [store.enqueue_sync(make_jobs(priority=p)[0]) for p in priorities]
    assert store.get_job_sync(blocker.id).status is JobStatus.RUNNING

    eventually(completed(store, len(jobs) + 1), what="every job completing")
    ran = [run[0] for run in executions([job.id for job in jobs])]
    by_priority_then_age = [job.id for _, _, job in sorted(
        ((-job.priority, n, job) for n, job in enumerate(jobs)), key=lambda t: t[:2])]
    assert ran == by_priority_then_age


def test_a_scheduled_job_starts_within_a_second_of_its_time_while_beat_sweeps(
    store, cluster, dispatch_on_commit
):
    cluster.worker(concurrency=1)
    cluster.beat()
    now = datetime.now(UTC)
    jobs = [store.enqueue_sync(make_jobs(scheduled_at=now + timedelta(seconds=s))[0])
            for s in (1.2, 1.9, 2.6)]
    assert store.get_queue_stats_sync("default").scheduled_count == 3

    eventually(completed(store, 3), what="the scheduled jobs completing")
    started = {run[0]: run[3] for run in executions([job.id for job in jobs])}
    for job in jobs:
        late = (started[job.id] - job.scheduled_at).total_seconds()
        assert 0 <= late < 1.0, f"started {late:.3f}s after its time"


def test_an_enqueue_inside_a_transaction_that_rolls_back_creates_no_job_and_sends_no_message(
    store, broker: Broker, dispatch_on_commit
):
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        store.enqueue_sync(make_jobs()[0])
        assert broker.waiting("portico.default") == 0  # nothing is sent before the commit
        raise Abort
    assert JobRecord.objects.count() == 0
    assert broker.waiting("portico.default") == 0

    # The same enqueue committed does ring: one message, naming the queue and nothing else.
    with transaction.atomic():
        job = store.enqueue_sync(make_jobs()[0])
    eventually(lambda: broker.waiting("portico.default") == 1, what="the doorbell arriving")
    with Connection(broker.url) as conn, conn.channel() as channel:
        message = channel.basic_get("portico.default", no_ack=True)
    body = message.body.decode() if isinstance(message.body, bytes) else message.body
    assert message.headers["task"] == dispatch.RUN_QUEUE
    assert json.loads(body)[0] == ["default"]
    assert str(job.id) not in body
    assert message.headers["eta"] is None and message.headers["expires"] is None


def test_a_requeued_job_rings_its_queues_doorbell(store, broker: Broker, dispatch_on_commit):
    job = store.enqueue_sync(make_jobs(max_retries=0)[0])
    eventually(lambda: broker.waiting("portico.default") == 1, what="the doorbell arriving")
    broker.purge("portico.default")
    claimed = store.dequeue_sync("default")
    store.reject_sync(claimed.id, error_message="boom", claim=claimed)
    assert store.get_job_sync(job.id).status is JobStatus.DEAD_LETTER
    assert broker.waiting("portico.default") == 0

    store.requeue_job_sync(job.id)
    eventually(lambda: broker.waiting("portico.default") == 1, what="the requeue's doorbell")


def test_a_doorbell_the_broker_lost_is_rung_again_by_the_sweep(
    store, broker: Broker, cluster, dispatch_on_commit
):
    job = store.enqueue_sync(make_jobs()[0])
    eventually(lambda: broker.waiting("portico.default") == 1, what="the doorbell arriving")
    broker.purge("portico.default")
    assert broker.waiting("portico.default") == 0

    cluster.worker(concurrency=1)
    assert store.get_job_sync(job.id).status is JobStatus.PENDING
    dispatch_on_commit.send_task(dispatch.SWEEP)  # what beat sends; the worker runs it
    eventually(lambda: store.get_job_sync(job.id).status is JobStatus.COMPLETED,
               what="the job completing after the sweep")
    assert len(executions([job.id])) == 1


def test_a_worker_pinned_to_one_queue_leaves_the_other_queues_jobs_to_their_own_workers(
    store, broker: Broker, cluster, dispatch_on_commit
):
    cluster.worker(concurrency=1, queues="portico.default,portico.maintenance")
    mine = store.enqueue_sync(make_jobs()[0])
    other = store.enqueue_sync(make_jobs(queue_name="other")[0])
    eventually(lambda: store.get_job_sync(mine.id).status is JobStatus.COMPLETED,
               what="the default queue's job completing")
    assert broker.waiting("portico.other") == 1
    assert store.get_job_sync(other.id).status is JobStatus.PENDING

    cluster.worker(concurrency=1, queues="portico.other")
    eventually(lambda: store.get_job_sync(other.id).status is JobStatus.COMPLETED,
               what="the other queue's job completing on its own worker")


def test_a_slow_job_gives_back_the_jobs_claimed_with_it_and_keeps_its_lease_by_heartbeats(
    store, cluster, dispatch_on_commit
):
    cluster.worker(concurrency=2)
    # One commit, one doorbell: one worker process claims all six, the slow one first.
    slow, *quick = store.enqueue_many_sync(
        make_jobs(job_type="test.sleep", payload={"seconds": 4.5}, priority=10) + make_jobs(5))
    began = time.monotonic()

    eventually(lambda: all(store.get_job_sync(j.id).status is JobStatus.COMPLETED for j in quick),
               timeout=10, what="the quick jobs completing")
    assert time.monotonic() - began < 3.5
    assert store.get_job_sync(slow.id).status is JobStatus.RUNNING
    slow_pid = executions([slow.id])[0][2]
    assert slow_pid not in {run[2] for run in executions([j.id for j in quick])}

    # The slow job outlives its 3 s lease; heartbeats keep the reaper off it.
    def rescued_nothing_and_done() -> bool:
        assert slow.id not in store.rescue_sync()
        return store.get_job_sync(slow.id).status is JobStatus.COMPLETED

    eventually(rescued_nothing_and_done, timeout=10, what="the slow job completing")
    assert [(run[1], run[2]) for run in executions([slow.id])] == [(0, slow_pid)]
