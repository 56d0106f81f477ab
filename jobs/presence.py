"""Worker presence: each process that runs jobs keeps its row in portico_worker fresh while it lives.

A built-in worker, and the main process of a Celery worker that consumes Portico's queues,
each run one WorkerPresence thread: it upserts the process's row at once and then every
PORTICO_HEARTBEAT_SECONDS, and deletes it when stopped. /metrics counts the workers heard
from within a lease, per queue; a killed process's row stops counting a lease after its
last heartbeat, and prune deletes it later.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from django.db import connections

from jobs import services
from jobs.conf import setting
from jobs.queue import DatabaseJobQueueAdapter

log = logging.getLogger("portico.worker")

# WorkerRecord.worker_id holds at most this many characters.
WORKER_ID_LENGTH = 64
# How long a stopping process waits for the thread to delete its row.
STOP_WAIT = 5.0


def new_worker_id(hostname: str, pid: int) -> str:
    """``<hostname>:<pid>:<random hex>``: unique per process start, even where pids are reused."""
    tail = f":{pid}:{secrets.token_hex(4)}"
    return hostname[: WORKER_ID_LENGTH - len(tail)] + tail


class WorkerPresence(threading.Thread):
    """Says, every ``interval`` seconds, that this process runs jobs from ``queues``.

    A daemon thread with its own database connection, so it goes on while handlers run
    and whatever the rest of the process is doing. A failed write is logged and tried again
    at the next interval: presence is for monitoring, and never stops the worker.
    """

    def __init__(
        self,
        kind: str,
        queues: Iterable[str],
        *,
        job_queue: DatabaseJobQueueAdapter | None = None,
        interval: float | None = None,
    ) -> None:
        super().__init__(name="portico-presence", daemon=True)
        self.kind = kind
        self.queues = sorted(set(queues))
        self.job_queue = job_queue or services.job_queue()
        self.interval = float(setting("PORTICO_HEARTBEAT_SECONDS") if interval is None else interval)
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.worker_id = new_worker_id(self.hostname, self.pid)
        self._stopped = threading.Event()
        self._failing = False

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Delete this process's row (on the thread) and wait up to ``timeout`` for it."""
        self._stopped.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        try:
            while not self._stopped.is_set():
                self._write(self.job_queue.worker_seen_sync, self.worker_id, self.kind,
                            self.queues, self.hostname, self.pid)
                self._stopped.wait(self.interval)
            self._write(self.job_queue.worker_gone_sync, self.worker_id)
        finally:
            connections[self.job_queue.using].close()

    def _write(self, action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
        except Exception as exc:  # logged; the next heartbeat tries again
            log.warning("could not record worker %s in portico_worker: %s: %s", self.worker_id,
                        type(exc).__name__, exc, exc_info=not self._failing)
            self._failing = True
        else:
            if self._failing:
                log.info("recording worker %s in portico_worker works again", self.worker_id)
            self._failing = False
        finally:
            # A broken connection (the database restarted) is dropped, and a kept one is
            # checked before its next use.
            connections[self.job_queue.using].close_if_unusable_or_obsolete()


# -- Celery ---------------------------------------------------------------------------------

_celery_presence: WorkerPresence | None = None


def celery_worker_ready(consumer: Any) -> None:
    """On worker_ready: a Celery worker consuming Portico queues starts saying it is alive.

    worker_ready is sent once, in the worker's main process (the one consuming from the
    broker), never in its pool processes, in beat or in web processes.
    """
    global _celery_presence
    from celery import current_app

    from jobs.dispatch import portico_queue

    if _celery_presence is not None:
        return
    consumed = (getattr(consumer, "app", None) or current_app).amqp.queues.consume_from
    queues = sorted({name for name in map(portico_queue, consumed) if name is not None})
    if not queues:
        return  # only the maintenance queue, or none of Portico's
    _celery_presence = WorkerPresence("celery", queues)
    _celery_presence.start()
    log.info("worker %s serves Portico queues %s", _celery_presence.worker_id, ",".join(queues))


def celery_worker_shutdown() -> None:
    """On worker_shutdown: delete the row, so the worker stops counting at once."""
    global _celery_presence
    presence, _celery_presence = _celery_presence, None
    if presence is not None:
        presence.stop()
