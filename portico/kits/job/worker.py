"""Running jobs: JobExecutor runs one claimed job to its recorded outcome; WorkerManager claims and runs them."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from portico.exceptions import InvalidJobStateError, PorticoError, StaleClaimError
from portico.kits.job.registry import Handlers, handlers_by_type
from portico.kits.job.retry import RetryPolicy
from portico.ports.job import Job, JobResult, JobStatus
from portico.ports.job_handler import JobHandler
from portico.ports.job_queue import JobQueueAdapter

log = logging.getLogger("portico.worker")


class JobTimeoutError(PorticoError, TimeoutError):
    """The job ran longer than its time limit."""


class HandlerFailure(PorticoError):
    """The handler reported failure without an error."""


def _being_cancelled() -> bool:
    """Whether the running task was asked to stop (a CancelledError is not just raised)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class JobExecutor:
    """Runs one claimed job and records its outcome: the single place that decides it.

    Success is acknowledged with the result data. A failure (a failed result, an exception
    or a timeout) calls the handler's ``on_failure`` and is then rejected: retried after
    the policy's backoff unless the result says ``retry_recommended: False``. A job whose
    type has no handler fails for good with an error that says so.
    """

    def __init__(
        self,
        job_queue: JobQueueAdapter,
        handlers: Handlers,
        *,
        retry_policy: RetryPolicy | None = None,
        job_timeout: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.job_queue = job_queue
        self.handlers = handlers_by_type(handlers)
        self.retry_policy = retry_policy or RetryPolicy()
        self.job_timeout = job_timeout
        self.log = logger or log

    async def execute(self, job: Job) -> Job | None:
        """Run the claimed job; return it as recorded, or None if the claim had gone stale.

        If the run is cancelled (a worker shutting down), the job is released back to its
        queue unrun and the cancellation propagates.
        """
        started = time.monotonic()
        try:
            return await self._execute(job, started)
        except asyncio.CancelledError:
            with contextlib.suppress(InvalidJobStateError):
                await asyncio.shield(self.job_queue.release(job.id, claim=job))
            self._log(job, started, "released", None)
            raise

    async def _execute(self, job: Job, started: float) -> Job | None:
        handler = self.handlers.get(job.job_type)
        if handler is None:
            error = f"No handler is registered for job type {job.job_type!r}"
            return await self._record(job, started, "failed", self.job_queue.reject(
                job.id, requeue=False, error_message=error, claim=job), error)
        try:
            result = await self._run(handler, job)
        except asyncio.CancelledError as exc:
            if _being_cancelled():
                raise
            # The handler raised CancelledError itself, unasked: a failed run like any
            # other, so such a job ends in dead letter instead of killing worker slots.
            error = exc
            retry = True
        except Exception as exc:  # noqa: BLE001 - any handler error is a failed run
            error: BaseException = exc
            retry = True
        else:
            if result.success:
                return await self._record(job, started, "completed", self.job_queue.acknowledge(
                    job.id, result.result_data, claim=job), None)
            error = result.error or HandlerFailure()
            retry = result.result_data.get("retry_recommended") is not False

        await self._on_failure(handler, job, error)
        message = describe(error)
        delay = None
        if retry and job.retry_count < job.max_retries:
            delay = self.retry_policy.delay(job.retry_count + 1)
        outcome = self.job_queue.reject(
            job.id, requeue=retry, error_message=message, delay=delay, claim=job
        )
        return await self._record(job, started, "failed", outcome, message)

    async def _run(self, handler: JobHandler, job: Job) -> JobResult:
        if self.job_timeout is None:
            result = await handler.handle(job)
        else:
            limit = asyncio.timeout(self.job_timeout)
            try:
                async with limit:
                    result = await handler.handle(job)
            except TimeoutError as exc:
                # Only our own limit is a time-out of the job; a TimeoutError the handler
                # raised (an upstream API timing out) keeps its own type and message.
                if limit.expired():
                    raise JobTimeoutError(f"the job ran longer than {self.job_timeout:g}s") from exc
                raise
        if not isinstance(result, JobResult):
            raise TypeError(
                f"the handler for {job.job_type!r} returned {type(result).__name__}, not JobResult"
            )
        return result

    async def _on_failure(self, handler: JobHandler, job: Job, error: BaseException) -> None:
        try:
            await handler.on_failure(job, error if isinstance(error, Exception) else Exception(error))
        except Exception:  # noqa: BLE001 - logged, and the retry decision stands
            self.log.exception(
                "on_failure of the %r handler raised for job %s; the job's outcome is unchanged",
                job.job_type, job.id,
            )

    async def _record(self, job: Job, started: float, verdict: str, outcome, error: str | None) -> Job | None:
        try:
            recorded = await outcome
        except StaleClaimError:
            self.log.warning(
                "job %s: the claim was lost before its outcome (%s) was recorded; another "
                "attempt owns the job now", job.id, verdict,
            )
            return None
        self._log(job, started, recorded.status.value, error)
        return recorded

    def _log(self, job: Job, started: float, outcome: str, error: str | None) -> None:
        level = logging.INFO if outcome in (JobStatus.COMPLETED.value, "released") else logging.WARNING
        self.log.log(
            level,
            "job_id=%s job_type=%s queue=%s attempt=%d outcome=%s duration=%.3fs%s",
            job.id, job.job_type, job.queue_name, job.retry_count + 1, outcome,
            time.monotonic() - started, f" error={error!r}" if error else "",
            extra={"job_id": str(job.id), "job_type": job.job_type, "queue": job.queue_name,
                   "attempt": job.retry_count + 1, "outcome": outcome,
                   "duration": time.monotonic() - started},
        )


class WorkerManager:
    """Claims jobs from one or more queues and runs them, ``concurrency`` at a time.

    ``stop()`` is graceful: no new claims; jobs in flight get ``grace_period`` seconds to
    finish; the rest are released back to their queue, so none is lost. While running,
    the manager keeps its claims' leases alive with heartbeats.
    """

    def __init__(
        self,
        job_queue: JobQueueAdapter,
        handlers: Handlers,
        concurrency: int = 1,
        queues: str | Sequence[str] = ("default",),
        *,
        retry_policy: RetryPolicy | None = None,
        job_timeout: float | None = None,
        grace_period: float = 30.0,
        poll_timeout: float = 5.0,
        heartbeat_interval: float | None = None,
        rescue_interval: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.job_queue = job_queue
        self.queues = (queues,) if isinstance(queues, str) else tuple(queues)
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        self.concurrency = concurrency
        self.executor = JobExecutor(
            job_queue, handlers, retry_policy=retry_policy, job_timeout=job_timeout, logger=logger
        )
        self.grace_period = grace_period
        self.poll_timeout = poll_timeout
        lease = float(getattr(job_queue, "lease_seconds", 300.0))
        self.heartbeat_interval = heartbeat_interval or max(0.05, lease / 3)
        self.rescue_interval = rescue_interval
        self.log = logger or log
        self._slots: list[asyncio.Task[None]] = []
        self._helpers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._claims: dict[object, Job] = {}
        self._stopping = False

    @property
    def handlers(self) -> dict[str, JobHandler]:
        return self.executor.handlers

    @property
    def is_running(self) -> bool:
        return bool(self._slots) and not self._stopping

    @property
    def in_flight(self) -> list[Job]:
        return list(self._claims.values())

    async def start(self) -> None:
        if self._slots:
            raise RuntimeError("this WorkerManager is already started")
        self._stopping = False
        self._slots = [
            asyncio.create_task(self._slot(), name=f"portico-worker-{n}")
            for n in range(self.concurrency)
        ]
        self._helpers = [asyncio.create_task(self._every(self.heartbeat_interval, self._heartbeat))]
        if self.rescue_interval:
            self._helpers.append(asyncio.create_task(self._every(self.rescue_interval, self._rescue)))

    async def stop(self, grace_period: float | None = None) -> None:
        if not self._slots:
            return
        grace = self.grace_period if grace_period is None else grace_period
        self._stopping = True
        # Idle slots are only waiting for work; dequeue is safe to cancel.
        for slot in self._slots:
            if slot not in self._busy:
                slot.cancel()
        _, late = await asyncio.wait(self._slots, timeout=grace) if grace > 0 else (set(), set(self._slots))
        for slot in late:
            slot.cancel()  # the executor releases the job back to its queue
        await asyncio.gather(*self._slots, return_exceptions=True)
        for helper in self._helpers:
            helper.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)
        self._slots, self._helpers = [], []

    async def run(self) -> None:
        """Start and work until cancelled; cancellation stops gracefully."""
        await self.start()
        try:
            # wait, not gather: cancelling gather would cancel the slots at once and
            # release every job in flight, skipping the grace period stop() gives them.
            await asyncio.wait(self._slots)
        finally:
            await asyncio.shield(self.stop())

    async def _slot(self) -> None:
        this = asyncio.current_task()
        assert this is not None
        while not self._stopping:
            try:
                job = await self.job_queue.dequeue(self.queues, timeout=self.poll_timeout)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a store outage must not kill the worker
                self.log.exception("claiming a job from %s failed; retrying", ", ".join(self.queues))
                await asyncio.sleep(min(self.poll_timeout, 1.0))
                continue
            if job is None:
                continue
            self._busy.add(this)
            self._claims[this] = job
            try:
                await self.executor.execute(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - recording failed; the lease brings the job back
                self.log.exception("recording the outcome of job %s failed", job.id)
            finally:
                self._busy.discard(this)
                self._claims.pop(this, None)

    async def _every(self, interval: float, action) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await action()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                self.log.exception("periodic %s failed", getattr(action, "__name__", action))

    async def _heartbeat(self) -> None:
        claims = self.in_flight
        if not claims:
            return
        held = set(await self.job_queue.heartbeat(claims))
        for job in claims:
            if job.id not in held:
                self.log.warning("job %s: lease lost; its outcome will not be recorded", job.id)

    async def _rescue(self) -> None:
        rescued = await self.job_queue.rescue()
        if rescued:
            self.log.warning("rescued %d job(s) whose worker was lost", len(rescued))
