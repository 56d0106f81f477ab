"""The built-in worker process: WorkerManager over the job store, maintenance on timers, and signals."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import connections

from jobs import maintenance, services
from jobs.conf import setting
from jobs.presence import WorkerPresence
from jobs.queue import DatabaseJobQueueAdapter
from jobs.registry import get_handlers
from portico.kits.job import WorkerManager
from portico.ports.job import DEFAULT_QUEUE
from portico.ports.job_handler import JobHandler

log = logging.getLogger("portico.worker")

# How long the process waits, once stopped, for handler threads to end before it leaves
# without them (a synchronous handler cannot be interrupted; its job is already released).
THREAD_EXIT_WAIT = 1.0
# The exit status of a worker that gave up on the job store: its heartbeats failed for a
# whole lease. A supervisor restarting it gets a process with new connections.
EXIT_UNHEALTHY = 3
# How long such a worker tries to stop cleanly (its store may hang) before it leaves anyway.
UNHEALTHY_EXIT_WAIT = 10.0


class Worker:
    """One ``portico_worker`` process: runs jobs until SIGTERM or SIGINT, then stops gracefully.

    The first signal stops claiming, gives the jobs in flight ``PORTICO_GRACE_PERIOD``
    seconds and releases the rest; a second signal exits at once, and the leases of the
    jobs it abandons bring them back. The upkeep of jobs.maintenance (rescue, pruning,
    compaction, failure groups, throughput samples) runs on timers, each task under a
    PostgreSQL advisory lock so that one process at a time does it. The
    process keeps its row in ``portico_worker`` fresh (WorkerPresence) while it runs.

    If heartbeats fail for a whole lease (the database is gone, or unreachable), its claims
    are lost: it stops at once and exits with status 3 (``EXIT_UNHEALTHY``).
    """

    def __init__(
        self,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
        concurrency: int = 10,
        batch_size: int = 10,
        *,
        job_queue: DatabaseJobQueueAdapter | None = None,
        handlers: dict[str, JobHandler] | None = None,
    ) -> None:
        self.queues = tuple(queues)
        self.job_queue = job_queue or services.job_queue()
        self.handlers = get_handlers() if handlers is None else handlers
        self.grace_period = float(setting("PORTICO_GRACE_PERIOD"))
        timeout = setting("PORTICO_JOB_TIMEOUT")
        self.manager = WorkerManager(
            self.job_queue,
            self.handlers,
            concurrency,
            self.queues,
            batch_size=batch_size,
            retry_policy=services.retry_policy(),
            job_timeout=float(timeout) if timeout is not None else None,
            grace_period=self.grace_period,
            heartbeat_interval=float(setting("PORTICO_HEARTBEAT_SECONDS")),
        )
        # Every upkeep task on its own timer (jobs.maintenance; an interval of 0 turns it off).
        self.maintenance: list[tuple[str, float, Callable[[], Any]]] = [
            (task.name, task.interval(), functools.partial(maintenance.run, task.name, self.job_queue))
            for task in maintenance.TASKS.values()
        ]
        self.presence = WorkerPresence("builtin", self.queues, job_queue=self.job_queue,
                                       interval=float(setting("PORTICO_HEARTBEAT_SECONDS")))
        self.exit_status = 0
        self._stop: asyncio.Event | None = None
        self._signals = 0

    def run(self) -> int:
        """Work until signalled (return 0) or until the job store is lost (return 3).

        A second signal exits at once.
        """
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            # Not shutdown_default_executor(): it would wait for a synchronous handler that
            # outlived the grace period, and whose job is already back in its queue.
            loop.close()
        _leave_lingering_threads_behind(self.exit_status)
        return self.exit_status

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._signalled, signum)
        maintenance_pool = ThreadPoolExecutor(1, thread_name_prefix="portico-maintenance")
        timers = [
            asyncio.create_task(self._every(maintenance_pool, name, interval, action),
                                name=f"portico-{name}")
            for name, interval, action in self.maintenance if interval > 0
        ]
        try:
            await self.job_queue.initialize()
            await self.manager.start()
            self.presence.start()
            log.info(
                "portico_worker started: pid=%d queues=%s concurrency=%d batch=%d handlers=%s",
                os.getpid(), ",".join(self.queues), self.manager.concurrency,
                self.manager.batch_size, ",".join(sorted(self.handlers)) or "(none)",
            )
            signalled = asyncio.ensure_future(self._stop.wait())
            unhealthy = asyncio.ensure_future(self.manager.wait_unhealthy())
            await asyncio.wait({signalled, unhealthy}, return_when=asyncio.FIRST_COMPLETED)
            signalled.cancel()
            unhealthy.cancel()
            if self.manager.healthy:
                log.info(
                    "portico_worker stopping: no new claims; %d job(s) in flight get up to %gs to finish",
                    len(self.manager.in_flight), self.grace_period,
                )
                await self.manager.stop()
            else:
                await self._give_up(await self.manager.wait_unhealthy())
        finally:
            for timer in timers:
                timer.cancel()
            await asyncio.gather(*timers, return_exceptions=True)
            await loop.run_in_executor(maintenance_pool, self.presence.stop)
            await loop.run_in_executor(maintenance_pool, self._close_connection)
            maintenance_pool.shutdown(wait=True)
            await self.job_queue.close()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if self.exit_status:
            log.error("portico_worker stopped: pid=%d exit status %d", os.getpid(), self.exit_status)
        else:
            log.info("portico_worker stopped: pid=%d", os.getpid())

    async def _give_up(self, reason: str) -> None:
        """The job store is lost: stop now, releasing what can be released, and exit with 3.

        No grace period: the leases of the jobs in flight have run out, so another worker
        may be running them already, and their outcomes would be refused.
        """
        self.exit_status = EXIT_UNHEALTHY
        log.error(
            "portico_worker giving up, exit status %d: %s; stopping %d job(s) in flight now, "
            "their rescue will run them again", EXIT_UNHEALTHY, reason, len(self.manager.in_flight),
        )
        # Stopping talks to the store, which may not answer: leave regardless after a while.
        watchdog = threading.Timer(UNHEALTHY_EXIT_WAIT, _exit_now, [EXIT_UNHEALTHY])
        watchdog.daemon = True
        watchdog.start()
        await self.manager.stop(grace_period=0)

    def _signalled(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self._signals += 1
        if self._signals > 1:
            log.warning(
                "portico_worker: %s again, exiting at once; the leases of %d job(s) in flight "
                "will bring them back", name, len(self.manager.in_flight),
            )
            _flush_output()
            os._exit(128 + signum)
        log.info("portico_worker: %s received", name)
        assert self._stop is not None
        self._stop.set()

    # -- maintenance ---------------------------------------------------------------------

    async def _every(self, pool: ThreadPoolExecutor, name: str, interval: float,
                     action: Callable[[], Any]) -> None:
        """Run action now and then every interval seconds, on the maintenance thread."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(pool, action)
            except asyncio.CancelledError:
                raise
            except Exception:  # the next round tries again
                log.exception("maintenance %r failed; trying again in %gs", name, interval)
            await asyncio.sleep(interval)

    def _close_connection(self) -> None:
        connections[self.job_queue.using].close()


def _flush_output() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _exit_now(status: int) -> None:
    log.error("portico_worker: could not stop within %gs; exiting with status %d at once",
              UNHEALTHY_EXIT_WAIT, status)
    _flush_output()
    os._exit(status)


def _leave_lingering_threads_behind(status: int = 0) -> None:
    """Exit now, with ``status``, if a handler thread is still running after the stop.

    Only a synchronous handler that outlived the grace period can be one: its job is back in
    its queue, so the process must not stay to finish it (the interpreter would wait for it).
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    deadline = time.monotonic() + THREAD_EXIT_WAIT
    for thread in others:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    lingering = [t.name for t in others if t.is_alive()]
    if lingering:
        log.warning("portico_worker: leaving %d handler thread(s) still running: %s",
                    len(lingering), ", ".join(lingering))
        _flush_output()
        os._exit(status)
