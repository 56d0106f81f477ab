"""Random sequences of queue operations, checked step by step against a simple model."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from portico.exceptions import InvalidJobStateError
from portico.ports.job import Job, JobStatus

QUEUES = ("alpha", "beta")
WAITING = {JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.RETRYING}


@dataclass
class Expected:
    queue: str
    priority: int
    max_retries: int
    order: int
    status: JobStatus = JobStatus.PENDING
    retry_count: int = 0
    due: bool = True
    claim: Job | None = None


def machine_for(make_queue, check_store=None, reset=None):
    class QueueMachine(RuleBasedStateMachine):
        """The adapter must agree with this model after every step."""

        jobs = Bundle("jobs")

        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            if reset is not None:
                reset()
            self.queue = make_queue()
            self.run(self.queue.initialize())
            self.model: dict[UUID, Expected] = {}
            self.counter = 0
            self.totals = {q: {"enqueued": 0, "completed": 0, "failed": 0, "dead": 0, "retried": 0}
                           for q in QUEUES}

        def run(self, coro):
            return self.loop.run_until_complete(coro)

        def teardown(self) -> None:
            try:
                self.run(self.queue.close())
            finally:
                self.loop.close()

        @rule(
            target=jobs,
            queue=st.sampled_from(QUEUES),
            priority=st.integers(0, 3),
            max_retries=st.integers(0, 2),
            later=st.booleans(),
        )
        def enqueue(self, queue, priority, max_retries, later):
            scheduled_at = datetime.now(UTC) + timedelta(hours=1) if later else None
            job = self.run(self.queue.enqueue(Job(
                id=uuid4(), queue_name=queue, job_type="model.step", payload={"n": self.counter},
                priority=priority, max_retries=max_retries, scheduled_at=scheduled_at,
            )))
            self.counter += 1
            self.model[job.id] = Expected(
                queue, priority, max_retries, self.counter,
                status=JobStatus.SCHEDULED if later else JobStatus.PENDING, due=not later,
            )
            self.totals[queue]["enqueued"] += 1
            assert job.status is self.model[job.id].status
            return job.id

        @rule(queues=st.sampled_from([("alpha",), ("beta",), QUEUES]))
        def dequeue(self, queues):
            due = [
                (job_id, e) for job_id, e in self.model.items()
                if e.queue in queues and e.status in WAITING and e.due
            ]
            job = self.run(self.queue.dequeue(list(queues), timeout=0))
            if not due:
                assert job is None
                return
            best = max(e.priority for _, e in due)
            expected_id = min((e.order, job_id) for job_id, e in due if e.priority == best)[1]
            assert job is not None and job.id == expected_id
            assert job.status is JobStatus.RUNNING
            self.model[job.id].status = JobStatus.RUNNING
            self.model[job.id].claim = job

        def _running(self, job_id: UUID) -> bool:
            return self.model[job_id].status is JobStatus.RUNNING

        @rule(job_id=jobs)
        def acknowledge(self, job_id):
            e = self.model[job_id]
            if e.status is not JobStatus.RUNNING:
                with pytest.raises(InvalidJobStateError):
                    self.run(self.queue.acknowledge(job_id))
                return
            job = self.run(self.queue.acknowledge(job_id, {"ok": True}, claim=e.claim))
            e.status, e.claim = JobStatus.COMPLETED, None
            self.totals[e.queue]["completed"] += 1
            assert job.status is JobStatus.COMPLETED

        @rule(job_id=jobs, requeue=st.booleans(), delayed=st.booleans())
        def reject(self, job_id, requeue, delayed):
            e = self.model[job_id]
            if e.status not in WAITING | {JobStatus.RUNNING}:
                with pytest.raises(InvalidJobStateError):
                    self.run(self.queue.reject(job_id, requeue=requeue, error_message="x"))
                return
            job = self.run(self.queue.reject(
                job_id, requeue=requeue, error_message=f"error {job_id}",
                delay=3600 if delayed else None, claim=e.claim,
            ))
            if requeue and e.retry_count < e.max_retries:
                e.status, e.retry_count = JobStatus.RETRYING, e.retry_count + 1
                e.due = e.due and not delayed
                self.totals[e.queue]["retried"] += 1
            elif requeue:
                e.status = JobStatus.DEAD_LETTER
                self.totals[e.queue]["dead"] += 1
            else:
                e.status = JobStatus.FAILED
                self.totals[e.queue]["failed"] += 1
            e.claim = None
            assert job.error_message == f"error {job_id}"

        @rule(job_id=jobs)
        def release(self, job_id):
            e = self.model[job_id]
            if e.status is not JobStatus.RUNNING:
                with pytest.raises(InvalidJobStateError):
                    self.run(self.queue.release(job_id))
                return
            self.run(self.queue.release(job_id, claim=e.claim))
            if e.retry_count:
                e.status = JobStatus.RETRYING
            else:
                e.status = JobStatus.PENDING if e.due else JobStatus.SCHEDULED
            e.claim = None

        @rule(job_id=jobs)
        def cancel(self, job_id):
            e = self.model[job_id]
            cancelled = self.run(self.queue.cancel_job(job_id))
            assert cancelled is (e.status in WAITING)
            if cancelled:
                e.status = JobStatus.FAILED
                self.totals[e.queue]["failed"] += 1

        @rule(job_id=jobs)
        def requeue(self, job_id):
            e = self.model[job_id]
            if e.status not in (JobStatus.FAILED, JobStatus.DEAD_LETTER):
                with pytest.raises(InvalidJobStateError):
                    self.run(self.queue.requeue_job(job_id))
                return
            self.run(self.queue.requeue_job(job_id))
            e.status, e.retry_count, e.due = JobStatus.PENDING, 0, True

        @rule(job_id=consumes(jobs))
        def forget(self, job_id):
            """Stop drawing this job (keeps the bundle small); it stays in the model."""

        @invariant()
        def every_job_matches_the_model(self):
            for job_id, e in self.model.items():
                job = self.run(self.queue.get_job(job_id))
                assert (job.status, job.retry_count) == (e.status, e.retry_count), job_id

        @invariant()
        def the_stats_match_the_model(self):
            for name in QUEUES:
                stats = self.run(self.queue.get_queue_stats(name))
                for status in JobStatus:
                    want = sum(1 for e in self.model.values() if e.queue == name and e.status is status)
                    assert stats.count(status) == want, (name, status)
                t = self.totals[name]
                assert (stats.enqueued_total, stats.completed_total, stats.failed_total,
                        stats.dead_lettered_total, stats.retried_total) == (
                    t["enqueued"], t["completed"], t["failed"], t["dead"], t["retried"])
            if check_store is not None:
                check_store(self.queue)

    return QueueMachine


def test_the_adapter_agrees_with_the_model_under_random_operations(make_queue, request):
    check_store = getattr(make_queue, "check_store", None)
    reset = getattr(make_queue, "reset", None)
    run_state_machine_as_test(
        machine_for(make_queue, check_store, reset),
        settings=settings(
            max_examples=int(getattr(make_queue, "stateful_examples", 60)),
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
