"""Running jobs: JobExecutor runs one claimed job to its recorded outcome; WorkerManager claims and runs them."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from uuid import UUID

from portico.exceptions import InvalidJobStateError, PorticoError, StaleClaimError
from portico.kits.job.registry import Handlers, handlers_by_type
from portico.kits.job.retry import RetryPolicy
from portico.ports.job import DEFAULT_QUEUE, Job, JobResult, JobStatus
from portico.ports.job_handler import JobHandler
from portico.ports.job_queue import JobQueueAdapter

log = logging.getLogger("portico.worker")


class JobTimeoutError(PorticoError, TimeoutError):
    """The job ran longer than its time limit."""


class HandlerFailure(PorticoError):
    """The handler reported failure without an error."""


class LeasesLostError(PorticoError):
    """The job store did not renew this worker's leases for a whole lease: its claims are lost."""


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

    Each outcome is logged as one line (``job_id=… job_type=… queue=… attempt=… outcome=…
    duration=…s``, and the error if any) whose record also carries those fields as
    attributes (``job_id``, ``job_type``, ``queue``, ``attempt``, ``outcome``, ``duration``)
    for structured handlers.

    ``on_handled``, if given, is told each job whose handling is over and whose outcome is
    about to be written, so a caller can start claiming the next job meanwhile.

    Writing the outcome is tried again, with backoff, while it fails for any reason other
    than a refusal of the store (a database restarting, a connection cut) and for at most
    ``outcome_retry_seconds`` (by default the queue's lease: after that the claim is lost
    anyway). A job that ran is thus recorded once, not run again after its lease for want
    of a write.
    """

    def __init__(
        self,
        job_queue: JobQueueAdapter,
        handlers: Handlers,
        *,
        retry_policy: RetryPolicy | None = None,
        job_timeout: float | None = None,
        logger: logging.Logger | None = None,
        on_handled: Callable[[Job], None] | None = None,
        outcome_retry_seconds: float | None = None,
    ) -> None:
        self.job_queue = job_queue
        self.outcome_retry_seconds = float(
            outcome_retry_seconds if outcome_retry_seconds is not None
            else getattr(job_queue, "lease_seconds", 30.0)
        )
        self.handlers = handlers_by_type(handlers)
        self.retry_policy = retry_policy or RetryPolicy()
        self.job_timeout = job_timeout
        self.log = logger or log
        self.on_handled = on_handled

    async def execute(self, job: Job) -> Job | None:
        """Run the claimed job; return it as recorded, or None if the claim had gone stale.

        If the run is cancelled (a worker shutting down), the job is released back to its
        queue unrun and the cancellation propagates.
        """
        started = time.monotonic()
        try:
            return await self._execute(job, started)
        except asyncio.CancelledError:
            await asyncio.shield(self._give_back(job, started))
            raise

    async def release(self, job: Job) -> None:
        """Give a claimed job back to its queue unrun: a worker stopping before it started it."""
        await self._give_back(job, time.monotonic())

    async def _give_back(self, job: Job, started: float) -> None:
        with contextlib.suppress(InvalidJobStateError):  # already rescued: nothing to give back
            await self.job_queue.release(job.id, claim=job)
        self._log(job, started, "released", None)

    async def _execute(self, job: Job, started: float) -> Job | None:
        handler = self.handlers.get(job.job_type)
        if handler is None:
            error = f"No handler is registered for job type {job.job_type!r}"
            return await self._record(job, started, "failed", lambda: self.job_queue.reject(
                job.id, requeue=False, error_message=error, claim=job), error)
        try:
            if self.job_timeout is None:  # no coroutine of its own: one less per job
                result = self._checked(await handler.handle(job), job)
            else:
                result = await self._run_limited(handler, job)
        except asyncio.CancelledError as exc:
            if _being_cancelled():
                raise
            # The handler raised CancelledError itself, unasked: a failed run like any
            # other, so such a job ends in dead letter instead of killing worker slots.
            error: BaseException = exc
            retry = True
        except Exception as exc:  # any handler error is a failed run
            error = exc
            retry = True
        else:
            if result.success:
                return await self._record(job, started, "completed", lambda: self.job_queue.acknowledge(
                    job.id, result.result_data, claim=job), None)
            error = result.error or HandlerFailure()
            retry = result.result_data.get("retry_recommended") is not False

        await self._on_failure(handler, job, error)
        message = describe(error)
        delay = None
        if retry and job.retry_count < job.max_retries:
            delay = self.retry_policy.delay(job.retry_count + 1)
        def outcome() -> Awaitable[Job]:
            return self.job_queue.reject(job.id, requeue=retry, error_message=message, delay=delay, claim=job)

        return await self._record(job, started, "failed", outcome, message)

    async def _run_limited(self, handler: JobHandler, job: Job) -> JobResult:
        assert self.job_timeout is not None
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
        return self._checked(result, job)

    @staticmethod
    def _checked(result: object, job: Job) -> JobResult:
        if not isinstance(result, JobResult):
            raise TypeError(
                f"the handler for {job.job_type!r} returned {type(result).__name__}, not JobResult"
            )
        return result

    async def _on_failure(self, handler: JobHandler, job: Job, error: BaseException) -> None:
        try:
            await handler.on_failure(job, error if isinstance(error, Exception) else Exception(error))
        except Exception:  # logged, and the retry decision stands
            self.log.exception(
                "on_failure of the %r handler raised for job %s; the job's outcome is unchanged",
                job.job_type, job.id,
            )

    async def _record(self, job: Job, started: float, verdict: str, write: Callable[[], Awaitable[Job]],
                      error: str | None) -> Job | None:
        if self.on_handled is not None:
            self.on_handled(job)
        try:
            recorded = await self._written(job, verdict, write)
        except StaleClaimError:
            self.log.warning(
                "job %s: the claim was lost before its outcome (%s) was recorded; another "
                "attempt owns the job now", job.id, verdict,
            )
            return None
        self._log(job, started, recorded.status.value, error)
        return recorded

    async def _written(self, job: Job, verdict: str, write: Callable[[], Awaitable[Job]]) -> Job:
        """The outcome written, tried again while the store fails (not while it refuses)."""
        deadline = time.monotonic() + self.outcome_retry_seconds
        pause = OUTCOME_RETRY_FIRST
        while True:
            try:
                return await write()
            except PorticoError:
                raise  # a refusal (a stale claim, a job gone): trying again changes nothing
            except Exception as exc:
                if time.monotonic() + pause > deadline:
                    raise
                self.log.warning("job %s: writing its outcome (%s) failed (%s); trying again in %.2gs",
                                 job.id, verdict, describe(exc), pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, OUTCOME_RETRY_MAX)

    def _log(self, job: Job, started: float, outcome: str, error: str | None) -> None:
        """The job's outcome line, with its fields also as attributes of the record.

        The record is made directly, not through Logger.log: that path looks up the caller's
        frame and copies an ``extra`` dict, which took most of a no-op job's logging time.
        """
        logger = self.log
        level = logging.INFO if outcome in _QUIET_OUTCOMES else logging.WARNING
        if not logger.isEnabledFor(level):
            return
        duration = time.monotonic() - started
        job_id = str(job.id)
        attempt = job.retry_count + 1
        message = (f"job_id={job_id} job_type={job.job_type} queue={job.queue_name} "
                   f"attempt={attempt} outcome={outcome} duration={duration:.3f}s")
        if error:
            message += f" error={error!r}"
        record = logging.getLogRecordFactory()(
            logger.name, level, __file__, _LOG_LINE, message, None, None, "_log")
        record.__dict__.update(job_id=job_id, job_type=job.job_type, queue=job.queue_name,
                               attempt=attempt, outcome=outcome, duration=duration)
        logger.handle(record)


# Pauses between attempts to write an outcome while the store fails: doubling from the first.
OUTCOME_RETRY_FIRST = 0.05
OUTCOME_RETRY_MAX = 2.0
# Outcomes logged at INFO; the others (failed, retrying, dead letter) at WARNING.
_QUIET_OUTCOMES = frozenset({JobStatus.COMPLETED.value, "released"})
_LOG_LINE = JobExecutor._log.__code__.co_firstlineno


class WorkerManager:
    """Claims jobs from one or more queues and runs them, ``concurrency`` at a time.

    With ``batch_size`` 1 each slot claims its own job. With a larger ``batch_size`` one
    claimer takes up to that many due jobs in a single ``dequeue_many`` (never more than
    there are free slots) and hands them to the free slots; it waits on a blocking
    ``dequeue`` only when nothing was due. A slot whose handler has finished counts as free
    while its outcome is being written, so that a whole batch is claimed during the writes
    instead of after them; its jobs start as the writes end. Handlers never run more than
    ``concurrency`` at a time.

    ``stop()`` is graceful: no new claims; jobs in flight get ``grace_period`` seconds to
    finish; the rest, and any job claimed but not yet started, are released back to their
    queue, so none is lost. While running, the manager keeps its claims' leases alive with
    heartbeats.
    """

    def __init__(
        self,
        job_queue: JobQueueAdapter,
        handlers: Handlers,
        concurrency: int = 1,
        queues: str | Sequence[str] = (DEFAULT_QUEUE,),
        *,
        batch_size: int = 1,
        retry_policy: RetryPolicy | None = None,
        job_timeout: float | None = None,
        grace_period: float = 30.0,
        poll_timeout: float = 5.0,
        heartbeat_interval: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.job_queue = job_queue
        self.queues = (queues,) if isinstance(queues, str) else tuple(queues)
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.executor = JobExecutor(
            job_queue, handlers, retry_policy=retry_policy, job_timeout=job_timeout, logger=logger,
            on_handled=self._handled,
        )
        self.grace_period = grace_period
        self.poll_timeout = poll_timeout
        lease = float(getattr(job_queue, "lease_seconds", 300.0))
        self.heartbeat_interval = heartbeat_interval or max(0.05, lease / 3)
        # Heartbeats failing (or unanswered) this long mean the leases are gone; two intervals
        # at least, so that a heartbeat interval set near the lease cannot make a crash loop.
        self.unhealthy_after = max(lease, 2 * self.heartbeat_interval)
        self.log = logger or log
        self._slots: list[asyncio.Task[None]] = []
        self._helpers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._claims: dict[object, Job] = {}
        self._stopping = False
        # Batch claiming: the claimer, the jobs it claimed that no slot has started yet,
        # the hand-off to the slots, and a signal that a slot came free.
        self._claimer: asyncio.Task[None] | None = None
        self._handling: set[UUID] = set()  # jobs whose handler has not finished yet
        self._unstarted: dict[UUID, Job] = {}
        self._handoff: asyncio.Queue[Job] = asyncio.Queue()
        self._freed = asyncio.Event()
        # Health: when the leases were last known renewed, and why the manager gave up.
        self._leases_renewed_at = 0.0
        self._unhealthy: str | None = None
        self._gave_up = asyncio.Event()

    @property
    def handlers(self) -> dict[str, JobHandler]:
        return self.executor.handlers

    @property
    def is_running(self) -> bool:
        return bool(self._slots) and not self._stopping

    @property
    def in_flight(self) -> list[Job]:
        return list(self._claims.values())

    @property
    def healthy(self) -> bool:
        """False once heartbeats have failed for ``unhealthy_after`` seconds: see ``wait_unhealthy``."""
        return self._unhealthy is None

    async def wait_unhealthy(self) -> str:
        """Wait until the manager gives up on its job store, and return why.

        It gives up when no heartbeat has renewed its leases for ``unhealthy_after`` seconds
        (the lease): the jobs it holds may be rescued and run elsewhere by then. It claims
        nothing more; its owner should stop it and leave, so that a supervisor starts a fresh
        process with new connections.
        """
        await self._gave_up.wait()
        assert self._unhealthy is not None
        return self._unhealthy

    async def start(self) -> None:
        if self._slots:
            raise RuntimeError("this WorkerManager is already started")
        self._stopping = False
        self._leases_renewed_at = time.monotonic()
        self._unhealthy = None
        self._gave_up = asyncio.Event()
        slot = self._slot if self.batch_size == 1 else self._fed_slot
        self._slots = [
            asyncio.create_task(slot(), name=f"portico-worker-{n}")
            for n in range(self.concurrency)
        ]
        if self.batch_size > 1:
            self._handoff = asyncio.Queue()
            self._freed = asyncio.Event()
            self._claimer = asyncio.create_task(self._claim_batches(), name="portico-claimer")
        self._helpers = [asyncio.create_task(self._keep_leases(), name="portico-heartbeat")]

    async def stop(self, grace_period: float | None = None) -> None:
        if not self._slots:
            return
        grace = self.grace_period if grace_period is None else grace_period
        self._stopping = True
        if self._claimer is not None:
            # A claim under way is let finish; what it took joins the jobs not yet started.
            self._claimer.cancel()
            await asyncio.gather(self._claimer, return_exceptions=True)
            self._claimer = None
        # Idle slots are only waiting for work; dequeue is safe to cancel, and a job handed
        # to a slot that has not taken it yet stays among the unstarted.
        for slot in self._slots:
            if slot not in self._busy:
                slot.cancel()
        await self._release_unstarted()
        _, late = await asyncio.wait(self._slots, timeout=grace) if grace > 0 else (set(), set(self._slots))
        for slot in late:
            slot.cancel()  # the executor releases the job back to its queue
        await asyncio.gather(*self._slots, return_exceptions=True)
        for helper in self._helpers:
            helper.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)
        self._slots, self._helpers = [], []

    async def run(self) -> None:
        """Start and work until cancelled; cancellation stops gracefully.

        Raises LeasesLostError, after stopping without a grace period, if the manager gives
        up on its job store (see ``wait_unhealthy``).
        """
        await self.start()
        gave_up = asyncio.ensure_future(self._gave_up.wait())
        try:
            # wait, not gather: cancelling gather would cancel the slots at once and
            # release every job in flight, skipping the grace period stop() gives them.
            working = set(self._slots)
            while working and not gave_up.done():
                _, working = await asyncio.wait(working | {gave_up}, return_when=asyncio.FIRST_COMPLETED)
                working.discard(gave_up)
        finally:
            gave_up.cancel()
            await asyncio.shield(self.stop(None if self.healthy else 0))
        if self._unhealthy is not None:
            raise LeasesLostError(self._unhealthy)

    async def _slot(self) -> None:
        """One job at a time, each claimed by the slot itself (``batch_size`` 1)."""
        this = asyncio.current_task()
        assert this is not None
        while not self._stopping:
            try:
                job = await self.job_queue.dequeue(self.queues, timeout=self.poll_timeout)
            except asyncio.CancelledError:
                raise
            except Exception:  # a store outage must not kill the worker
                await self._claim_failed()
                continue
            if job is not None:
                await self._run(this, job)

    async def _fed_slot(self) -> None:
        """One job at a time, each handed over by the claimer (``batch_size`` above 1)."""
        this = asyncio.current_task()
        assert this is not None
        while not self._stopping:
            job = await self._handoff.get()
            if self._stopping:
                return  # the job stays among the unstarted, which stop() releases
            # No await between taking the job and marking the slot busy (in _run), so a
            # stop sees the job either among the unstarted or in flight, never neither.
            self._unstarted.pop(job.id, None)
            await self._run(this, job)
            self._freed.set()

    async def _run(self, slot: asyncio.Task[None], job: Job) -> None:
        self._busy.add(slot)
        self._claims[slot] = job
        self._handling.add(job.id)
        try:
            await self.executor.execute(job)
        except asyncio.CancelledError:
            raise
        except Exception:  # recording failed; the lease brings the job back
            self.log.exception("recording the outcome of job %s failed", job.id)
        finally:
            self._busy.discard(slot)
            self._claims.pop(slot, None)
            self._handling.discard(job.id)

    def _handled(self, job: Job) -> None:
        self._handling.discard(job.id)
        self._freed.set()

    async def _claim_batches(self) -> None:
        full = min(self.batch_size, self.concurrency)
        while not self._stopping:
            self._freed.clear()
            free = self.concurrency - len(self._handling) - self._handoff.qsize()
            writing = len(self._busy) - len(self._handling)  # slots waiting for an outcome write
            # A whole batch is claimed at once, even while outcomes are being written; a part
            # of one waits for those writes, else claims and writes would keep splitting the
            # slots into smaller and smaller batches.
            if free <= 0 or (free < full and writing > 0):
                await self._freed.wait()
                continue
            try:
                jobs = await self._claim_many(min(self.batch_size, free))
                if not jobs:
                    job = await self.job_queue.dequeue(self.queues, timeout=self.poll_timeout)
                    jobs = [job] if job is not None else []
            except asyncio.CancelledError:
                raise
            except Exception:  # a store outage must not kill the worker
                await self._claim_failed()
                continue
            self._hand_over(jobs)

    async def _claim_many(self, limit: int) -> list[Job]:
        """dequeue_many, run to its end even if the worker stops meanwhile.

        An adapter's dequeue_many need not be safe to cancel (the port's default claims one
        job at a time), so a stop waits for the claim and keeps what it took, to release it.
        """
        claiming = asyncio.ensure_future(self.job_queue.dequeue_many(self.queues, limit))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self._hand_over(await claiming)
            raise

    def _hand_over(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._unstarted[job.id] = job
            self._handoff.put_nowait(job)

    async def _release_unstarted(self) -> None:
        unstarted, self._unstarted = list(self._unstarted.values()), {}
        self._handoff = asyncio.Queue()
        outcomes = await asyncio.gather(
            *(self.executor.release(job) for job in unstarted), return_exceptions=True
        )
        for job, outcome in zip(unstarted, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self.log.error(
                    "releasing job %s failed; its lease will bring it back", job.id, exc_info=outcome
                )

    async def _claim_failed(self) -> None:
        self.log.exception("claiming a job from %s failed; retrying", ", ".join(self.queues))
        await asyncio.sleep(min(self.poll_timeout, 1.0))

    async def _keep_leases(self) -> None:
        """Heartbeat every interval; give up once the leases went ``unhealthy_after`` unrenewed.

        A heartbeat that fails, or gets no answer before the leases would run out, is logged
        and tried again at the next interval: one failure between good ones changes nothing.
        With nothing held, there is no lease to lose and nothing to ask the store.
        """
        failures = 0
        last_error: str | None = None
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            sent = time.monotonic()
            left = self._leases_renewed_at + self.unhealthy_after - sent
            try:
                if left <= 0:
                    raise TimeoutError
                # An unanswered heartbeat (a store that hangs) counts as a failed one.
                async with asyncio.timeout(left):
                    await self._heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down or unreachable
                failures += 1
                unanswered = isinstance(exc, TimeoutError) and not str(exc)
                error = "no answer" if unanswered else describe(exc)
                last_error = last_error if unanswered and last_error else error
                unrenewed = time.monotonic() - self._leases_renewed_at
                if unrenewed >= self.unhealthy_after:
                    self._give_up(
                        f"{failures} heartbeat(s) in a row failed, for {unrenewed:.1f}s: as long "
                        f"as a lease ({self.unhealthy_after:g}s), so the claims of this worker "
                        f"are lost (last error: {last_error})"
                    )
                    return
                self.log.warning(
                    "heartbeat failed (%s); the leases were renewed %.1fs ago and run out after %gs",
                    error, unrenewed, self.unhealthy_after, exc_info=failures == 1 and not unanswered,
                )
            else:
                if failures:
                    self.log.info("heartbeats work again after %d failure(s)", failures)
                failures, last_error = 0, None
                self._leases_renewed_at = sent

    def _give_up(self, reason: str) -> None:
        """Claim nothing more and say so; the owner stops the jobs in flight."""
        self._unhealthy = reason
        self._stopping = True
        # A claim waiting for work would still take a job: end it now (safe, as in stop()).
        if self._claimer is not None:
            self._claimer.cancel()
        for slot in self._slots:
            if slot not in self._busy:
                slot.cancel()
        self._gave_up.set()
        self.log.error("worker unhealthy, no new claims: %s", reason)

    async def _heartbeat(self) -> None:
        claims = self.in_flight + list(self._unstarted.values())
        if not claims:
            return
        held = set(await self.job_queue.heartbeat(claims))
        for job in claims:
            if job.id not in held:
                self.log.warning("job %s: lease lost; its outcome will not be recorded", job.id)
