"""Celery workers that die, doorbells that come twice, brokers that are down: no job lost or run twice."""
from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery

from jobs import dispatch
from jobs.queue import DatabaseJobQueueAdapter
from portico.lifecycle import WORKER_LOST
from portico.ports.job import JobStatus
from tests.integration import celery_harness as harness
from tests.integration.celery_harness import Broker, eventually, executions, make_jobs

# The shared fixtures: brokers, Celery processes, the execution log.
broker, rabbitmq_vhost, celery_app = harness.broker, harness.rabbitmq_vhost, harness.celery_app
cluster, dispatch_on_commit = harness.cluster, harness.dispatch_on_commit
no_executions = harness.no_executions
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.celery, pytest.mark.postgres]


def status_of(store: DatabaseJobQueueAdapter, job_id: uuid.UUID) -> JobStatus:
    return store.get_job_sync(job_id).status


def rescue_and_sweep(store: DatabaseJobQueueAdapter) -> None:
    """What beat has the maintenance queue do, done here at once instead of on its timer."""
    store.rescue_sync()
    dispatch.sweep()


def test_the_same_doorbell_delivered_twice_at_once_runs_no_job_twice(store, cluster, celery_app: Celery):
    cluster.worker(concurrency=2)
    jobs = store.enqueue_many_sync(make_jobs(150, job_type="test.sleep", payload={"seconds": 0.01}))
    doorbell = str(uuid.uuid4())
    for _ in range(2):  # one message, sent twice: what a redelivery looks like to a worker
        celery_app.send_task(dispatch.RUN_QUEUE, args=["default"], task_id=doorbell)

    eventually(lambda: store.get_queue_stats_sync("default").completed_count == 150,
               what="every job completing")
    runs = executions([job.id for job in jobs])
    assert Counter(run[0] for run in runs) == Counter({job.id: 1 for job in jobs})
    assert len({run[2] for run in runs}) == 2  # both worker processes claimed at the same time


def test_a_celery_worker_killed_mid_job_loses_no_job_and_runs_each_attempt_once(
    store, cluster, dispatch_on_commit
):
    worker = cluster.worker(concurrency=1)
    job = store.enqueue_sync(make_jobs(job_type="test.sleep", payload={"seconds": 2.0})[0])
    eventually(lambda: executions([job.id]), what="the job starting")

    worker.kill()
    assert status_of(store, job.id) is JobStatus.RUNNING
    cluster.worker(concurrency=1)

    def completed() -> bool:
        rescue_and_sweep(store)
        return status_of(store, job.id) is JobStatus.COMPLETED

    eventually(completed, timeout=30, what="the job completing after rescue")
    assert [run[1] for run in executions([job.id])] == [0, 1]  # each attempt ran once
    attempts = store.get_job_attempts_sync(job.id)
    assert [(a.outcome, a.error_message) for a in attempts] == [
        ("retrying", WORKER_LOST), ("completed", None)]


def test_a_job_that_kills_its_worker_process_ends_in_dead_letter_after_max_retries(
    store, cluster, dispatch_on_commit
):
    worker = cluster.worker(concurrency=1)
    job = store.enqueue_sync(make_jobs(job_type="test.poison", max_retries=2)[0])

    def dead() -> bool:
        rescue_and_sweep(store)
        return status_of(store, job.id) is JobStatus.DEAD_LETTER

    eventually(dead, timeout=40, what="the poison job reaching dead letter")
    runs = executions([job.id])
    assert [run[1] for run in runs] == [0, 1, 2]
    # Each run killed its pool process, and Celery's prefork pool started a new one.
    assert len({run[2] for run in runs}) == 3
    # Celery's pool notices a dead process on its next check, up to 5 s later.
    eventually(lambda: worker.log().count("exited with 'exitcode 13'") == 3, timeout=10,
               what="Celery replacing the third dead pool process")
    assert worker.process.poll() is None  # the worker itself lives on: no crash loop
    assert store.get_job_sync(job.id).error_message == WORKER_LOST


def test_an_enqueue_while_the_broker_is_down_stores_the_job_and_the_sweep_starts_it(
    store, broker: Broker, cluster, dispatch_on_commit, caplog
):
    # A broker nobody listens on: the doorbell after commit cannot be sent.
    down = Celery("portico_site", set_as_current=False)
    down.config_from_object("django.conf:settings", namespace="CELERY")
    down.conf.broker_url = {"redis": "redis://127.0.0.1:1/0",
                            "rabbitmq": "amqp://guest:guest@127.0.0.1:1//"}[broker.name]
    down.set_current()
    down.set_default()
    try:
        job = store.enqueue_sync(make_jobs()[0])
    finally:
        dispatch_on_commit.set_current()
        dispatch_on_commit.set_default()
    assert status_of(store, job.id) is JobStatus.PENDING
    assert "the sweep will ring for them" in caplog.text

    cluster.worker(concurrency=1)
    assert dispatch.sweep() == ["default"]
    eventually(lambda: status_of(store, job.id) is JobStatus.COMPLETED, what="the job completing")
    assert len(executions([job.id])) == 1


def test_the_sweep_rings_only_queues_with_due_jobs_and_no_doorbell_waiting(
    store, broker: Broker, celery_app: Celery
):
    store.enqueue_sync(make_jobs()[0])
    later = datetime.now(UTC) + timedelta(hours=1)
    store.enqueue_sync(make_jobs(queue_name="other", scheduled_at=later)[0])
    assert dispatch.sweep() == ["default"]
    assert dispatch.sweep() == []  # its doorbell is still waiting: no second one
    assert broker.waiting("portico.default") == 1
    assert broker.waiting("portico.other") == 0
