"""The core operations, wired to the database: the one adapter provider, the job service, the retry policy.

Views, admin, metrics, the webhook, the scheduler, Celery tasks and the runner, the
built-in worker, operations and maintenance all get the database adapter from
``job_queue()``: one instance per database alias and process, so its threads, its
listener and its connections per event loop are made once. A forked child (a Celery pool
process, a gunicorn worker) makes its own on first use; what the parent's held did not
survive the fork.
"""
from __future__ import annotations

import os
import threading

from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS
from django.dispatch import receiver

from jobs.conf import setting
from jobs.queue import DatabaseJobQueueAdapter
from jobs.registry import get_handlers
from portico.kits.job import JobService, RetryPolicy

# (pid, database alias) -> the adapter; the pid keeps a forked child off its parent's.
_adapters: dict[tuple[int, str], DatabaseJobQueueAdapter] = {}
_lock = threading.Lock()


def job_queue(using: str | None = None) -> DatabaseJobQueueAdapter:
    """This process's adapter over the database ``using`` (Django's default database if None)."""
    key = (os.getpid(), using or DEFAULT_DB_ALIAS)
    adapter = _adapters.get(key)
    if adapter is not None:
        return adapter
    with _lock:
        adapter = _adapters.get(key)
        if adapter is None:
            adapter = _adapters[key] = DatabaseJobQueueAdapter(key[1])
        return adapter


def reset_job_queue() -> None:
    """Close and forget this process's adapters; the next job_queue() makes a new one.

    For tests, and called whenever a PORTICO_* setting or DATABASES changes: the adapter
    reads its settings (lease, poll interval, payload limit, ...) once, when it is made.
    """
    with _lock:
        mine = [key for key in _adapters if key[0] == os.getpid()]
        adapters = [_adapters.pop(key) for key in mine]
        # A forked parent's adapters are not ours to close; only forgotten.
        _adapters.clear()
    for adapter in adapters:
        adapter.close_sync()


def _after_fork_in_child() -> None:
    # A lock some other thread of the parent held at the fork stays held in the child forever.
    global _lock
    _lock = threading.Lock()
    _adapters.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@receiver(setting_changed)
def _setting_changed(*, setting: str, **_: object) -> None:
    if setting.startswith("PORTICO_") or setting == "DATABASES":
        reset_job_queue()


def job_service(queue: DatabaseJobQueueAdapter | None = None) -> JobService:
    return JobService(queue or job_queue(), handlers=get_handlers())


def retry_policy() -> RetryPolicy:
    return RetryPolicy(base=float(setting("PORTICO_RETRY_BASE")), cap=float(setting("PORTICO_RETRY_CAP")))
