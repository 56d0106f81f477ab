"""Celery doorbells: rung after commit and by the sweep, answered by claiming a queue's due jobs.

The job row in the database is the source of truth; a Celery message only says "look at
queue X". It carries no job, so the task that answers it claims the best due jobs of that
queue (priority, then age) whatever order messages arrive in; a duplicated or redelivered
message claims a different job or nothing; a lost one loses no job, because the sweep rings
again for every queue that has a due job and no waiting doorbell.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

from celery import current_app
from django.db import close_old_connections

from jobs.conf import setting
from jobs.queue import DatabaseJobQueueAdapter
from jobs.registry import get_handlers
from jobs.services import job_queue, retry_policy
from portico.exceptions import InvalidJobStateError
from portico.kits.job import JobExecutor
from portico.ports.job import Job, JobResult
from portico.ports.job_handler import JobHandler

log = logging.getLogger("portico.celery")

RUN_QUEUE = "portico.run_queue"
SWEEP = "portico.sweep"
RESCUE = "portico.rescue"
PRUNE = "portico.prune"
COMPACT_COUNTERS = "portico.compact_counters"
HEAL_FAILURE_GROUPS = "portico.heal_failure_groups"
RECORD_SAMPLES = "portico.record_samples"
# Sweep, rescue, prune and the like: some worker must consume this queue.
MAINTENANCE_QUEUE = "portico.maintenance"

# A claim takes about this many seconds of work, judged by how long the queue's jobs took.
BATCH_SECONDS = 0.5
# A job still running after this long is slow: the jobs claimed behind it are given back.
SLOW_JOB_SECONDS = 1.0
# How often the claim keeper looks for slow jobs (heartbeats have their own interval).
KEEPER_TICK = 0.25


def celery_queue(queue_name: str) -> str:
    """The Celery queue whose workers run the Portico queue ``queue_name``."""
    return f"portico.{queue_name}"


def portico_queue(celery_queue_name: str) -> str | None:
    """The Portico queue a Celery queue runs; None for the maintenance queue and foreign ones."""
    prefix = celery_queue("")
    if celery_queue_name == MAINTENANCE_QUEUE or not celery_queue_name.startswith(prefix):
        return None
    return celery_queue_name[len(prefix):] or None


def route(name: str, args: Sequence[Any], kwargs: dict[str, Any], options: dict[str, Any],
          task: Any = None, **_: Any) -> dict[str, str] | None:
    """Celery router: a doorbell goes to its queue's Celery queue, upkeep to the maintenance queue."""
    if name == RUN_QUEUE:
        return {"queue": celery_queue(args[0] if args else kwargs["queue_name"])}
    if name.startswith("portico."):
        return {"queue": MAINTENANCE_QUEUE}
    return None


# -- ringing ------------------------------------------------------------------------------

def ring(queue_names: Iterable[str]) -> None:
    """Send one doorbell to each of these queues (PORTICO_DISPATCH calls this after commit).

    A broker that cannot take the message is logged, not raised: the jobs are stored, and
    the sweep rings for them once the broker is back. No retries here for the same reason:
    an enqueue must not hang on a broker that is down.
    """
    names = sorted(set(queue_names))
    if not names:
        return
    try:
        with current_app.producer_or_acquire() as producer:
            # One attempt, where kombu would keep retrying for seconds.
            producer.connection.ensure_connection(max_retries=0)
            for name in names:
                current_app.send_task(RUN_QUEUE, args=[name], retry=False, producer=producer)
    except Exception:  # the sweep is the retry
        log.warning("could not ring the doorbell of %s; the sweep will ring for them",
                    ", ".join(names), exc_info=True)


def ring_where_silent(queue_names: Iterable[str]) -> list[str]:
    """Ring each queue that has no doorbell waiting in the broker; return the ones rung.

    The sweep and busy workers ring through here, so while every worker process is busy
    the broker holds at most about one of their doorbells per queue instead of a pile.
    Messages a worker has taken but not acknowledged are not waiting: they are being run.
    """
    names = sorted(set(queue_names))
    if not names:
        return []
    try:
        with current_app.pool.acquire(block=True) as connection:
            silent = [name for name in names if _waiting_doorbells(connection, name) == 0]
    except Exception:  # when in doubt, ring: a spare doorbell costs one query
        log.warning("could not count the waiting doorbells; ringing anyway", exc_info=True)
        silent = names
    ring(silent)
    return silent


def _waiting_doorbells(connection: Any, queue_name: str) -> int:
    # Declared exactly as Celery declares it (same arguments), which also reports the count;
    # a fresh channel, since a refused declaration closes the channel on RabbitMQ.
    queue = current_app.amqp.queues[celery_queue(queue_name)]
    with connection.channel() as channel:
        return queue.bind(channel).queue_declare().message_count


def sweep() -> list[str]:
    """Ring for every queue with a due job and no waiting doorbell; return the ones rung.

    This is what starts scheduled and retried jobs when they come due, released and
    rescued jobs, and jobs whose doorbell the broker lost.
    """
    return ring_where_silent(job_queue().due_queue_names_sync())


# -- answering ----------------------------------------------------------------------------

class QueueRunner:
    """Answers doorbells in one worker process, with one event loop kept for its lifetime.

    A doorbell claims the queue's best due jobs (up to PORTICO_CELERY_BATCH, fewer when the
    queue's jobs have been slow) and runs them through the core's JobExecutor, claiming
    again until nothing is due or PORTICO_CELERY_TASK_BUDGET seconds are spent. A full
    claim means a backlog, so it rings once more for another worker process to join; a
    budget spent with work left rings again to carry on later.

    Handlers take turns, in the order claimed (priority, then age): the next job's handler
    starts when the previous one's has finished, while the previous outcome is still being
    recorded, so the store can write several outcomes in one statement.
    """

    def __init__(self) -> None:
        # The process's adapter: its threads make the next claim while the last outcomes
        # are being written.
        self.queue = job_queue()
        self.turns = Turns()
        handlers = [TakingTurns(handler, self.turns) for handler in get_handlers().values()]
        self.executor = JobExecutor(
            self.queue, handlers, retry_policy=retry_policy(),
            job_timeout=setting("PORTICO_JOB_TIMEOUT"),
        )
        self.batch = max(1, int(setting("PORTICO_CELERY_BATCH")))
        self.budget = float(setting("PORTICO_CELERY_TASK_BUDGET"))
        self.loop = asyncio.new_event_loop()
        self.claims = ClaimKeeper(self.queue, float(setting("PORTICO_HEARTBEAT_SECONDS")))
        self._seconds_per_job: dict[str, float] = {}

    def run(self, queue_name: str) -> None:
        self.loop.run_until_complete(self._run(queue_name))

    async def _run(self, queue_name: str) -> None:
        deadline = time.monotonic() + self.budget
        recording: set[asyncio.Task[None]] = set()
        rang = False
        try:
            while True:
                size = self._claim_size(queue_name)
                claimed = await self.queue.dequeue_many(queue_name, size)
                if not claimed:
                    return
                full = len(claimed) == size
                if full and not rang:
                    ring_where_silent([queue_name])
                    rang = True
                self.claims.hold(claimed)
                await self._take_turns(queue_name, recording)
                if time.monotonic() >= deadline:
                    if full:
                        ring_where_silent([queue_name])
                    return
        finally:
            await asyncio.gather(*recording)
            # Only if something escaped above: nothing claimed stays held unrun.
            for job in self.claims.take_waiting():
                with contextlib.suppress(InvalidJobStateError):
                    await self.queue.release(job.id, claim=job)

    async def _take_turns(self, queue_name: str, recording: set[asyncio.Task[None]]) -> None:
        """Run the held jobs' handlers one after another; their outcomes are left recording."""
        while (job := self.claims.start_next()) is not None:
            began = time.monotonic()
            turn = self.turns.begin(job)
            task = self.loop.create_task(self._execute(job))
            recording.add(task)
            task.add_done_callback(recording.discard)
            # The handler's part is over when it succeeded or its on_failure returned;
            # a job without a handler is over when its outcome is recorded.
            waiter = self.loop.create_task(turn.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            self.turns.end(job)
            self.claims.turn_over(job)
            self._timed(queue_name, time.monotonic() - began)

    async def _execute(self, job: Job) -> None:
        try:
            await self.executor.execute(job)
        except Exception:  # recording failed; the lease brings the job back
            log.exception("recording the outcome of job %s failed", job.id)
        finally:
            self.turns.end(job)
            self.claims.finished(job)

    def _claim_size(self, queue_name: str) -> int:
        seconds = self._seconds_per_job.get(queue_name)
        if not seconds:
            return self.batch
        return max(1, min(self.batch, int(BATCH_SECONDS / seconds)))

    def _timed(self, queue_name: str, seconds: float) -> None:
        before = self._seconds_per_job.get(queue_name)
        self._seconds_per_job[queue_name] = seconds if before is None else 0.7 * before + 0.3 * seconds


class Turns:
    """Which job's handler has the turn, and the event that says its turn is over."""

    def __init__(self) -> None:
        self._events: dict[UUID, asyncio.Event] = {}

    def begin(self, job: Job) -> asyncio.Event:
        self._events[job.id] = asyncio.Event()
        return self._events[job.id]

    def end(self, job: Job) -> None:
        event = self._events.pop(job.id, None)
        if event is not None:
            event.set()


class TakingTurns(JobHandler):
    """A registered handler, unchanged, that ends its job's turn when its own part is done.

    That is when ``handle`` returned a successful result, or when ``on_failure`` returned
    after a failure: what is left is recording the outcome, which the next job need not
    wait for.
    """

    def __init__(self, handler: JobHandler, turns: Turns) -> None:
        self.handler = handler
        self.turns = turns

    @property
    def job_type(self) -> str:
        return self.handler.job_type

    async def handle(self, job: Job) -> JobResult:
        result = await self.handler.handle(job)
        if isinstance(result, JobResult) and result.success:
            self.turns.end(job)
        return result

    async def on_failure(self, job: Job, error: Exception) -> None:
        try:
            await self.handler.on_failure(job, error)
        finally:
            self.turns.end(job)


class ClaimKeeper(threading.Thread):
    """The claims of one worker process: leases kept alive, jobs stuck behind a slow one given back.

    A thread of its own, so heartbeats go out while a handler runs for as long as it likes.
    When a handler runs past SLOW_JOB_SECONDS, the jobs still waiting for their turn behind
    it are released to their queue and a doorbell rings, so idle worker processes take
    them instead of leaving them to wait.
    """

    def __init__(self, queue: DatabaseJobQueueAdapter, heartbeat_seconds: float) -> None:
        super().__init__(name="portico-claims", daemon=True)
        self.queue = queue
        self.heartbeat_seconds = heartbeat_seconds
        self._lock = threading.Lock()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None  # its handler has the turn
        self._running_since = 0.0
        self._recording: dict[UUID, Job] = {}  # handler done, outcome being written
        self._last_heartbeat = time.monotonic()

    def hold(self, claimed: Sequence[Job]) -> None:
        with self._lock:
            self._waiting.extend(claimed)
        if not self.is_alive():
            self.start()

    def start_next(self) -> Job | None:
        with self._lock:
            if not self._waiting:
                return None
            self._running = self._waiting.popleft()
            self._running_since = time.monotonic()
            self._recording[self._running.id] = self._running
            return self._running

    def turn_over(self, job: Job) -> None:
        with self._lock:
            if self._running is not None and self._running.id == job.id:
                self._running = None

    def finished(self, job: Job) -> None:
        with self._lock:
            self._recording.pop(job.id, None)

    def take_waiting(self) -> list[Job]:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
            return waiting

    def _held(self) -> dict[UUID, Job]:
        return {**self._recording, **{job.id: job for job in self._waiting}}

    def give_back(self, jobs: list[Job]) -> None:
        """Release claimed jobs unrun (no retry is counted) and ring for their queues."""
        if not jobs:
            return
        for job in jobs:
            with contextlib.suppress(InvalidJobStateError):  # rescued meanwhile: not ours
                self.queue.release_sync(job.id, claim=job)
        log.info("gave back %d claimed job(s) that were waiting behind a slow one", len(jobs))
        ring_where_silent(job.queue_name for job in jobs)

    def run(self) -> None:
        while True:
            time.sleep(KEEPER_TICK)
            try:
                self._tick()
            except Exception:  # a store outage: the leases say what happens next
                log.exception("keeping the claims of this worker process failed")
            finally:
                close_old_connections()

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            stuck: list[Job] = []
            if self._running is not None and now - self._running_since >= SLOW_JOB_SECONDS:
                stuck, self._waiting = list(self._waiting), deque()
            held = list(self._held().values())
        self.give_back(stuck)
        if not held or now - self._last_heartbeat < self.heartbeat_seconds:
            return
        self._last_heartbeat = now
        kept = set(self.queue.heartbeat_sync(held))
        with self._lock:
            # A job whose outcome is being written may just have been recorded: not lost.
            unfinished = {job.id for job in self._waiting} | (
                {self._running.id} if self._running else set())
        for job in held:
            if job.id not in kept and job.id in unfinished:
                log.warning("job %s: lease lost; its outcome will not be recorded", job.id)


_runner: QueueRunner | None = None
_runner_pid = 0


def answer(queue_name: str) -> None:
    """Answer a doorbell of ``queue_name`` with this worker process's runner."""
    global _runner, _runner_pid
    # Built in the process that uses it: an event loop or thread made before a fork
    # would be useless to the forked child.
    if _runner is None or _runner_pid != os.getpid():
        _runner, _runner_pid = QueueRunner(), os.getpid()
    _runner.run(queue_name)
