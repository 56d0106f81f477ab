"""Upkeep of the job store, run on timers and never by a page: what each task does, and how often.

The built-in worker runs every task on its own timer, Celery beat sends one message per
task (portico_site.celery.beat_schedule), and ``manage.py portico_maintain`` runs them
where neither is deployed. Each run takes a PostgreSQL advisory lock named after its
task (``exclusively``), so however many processes keep time, one at a time does the work.

Pages and /metrics only read: counts are summed from the counter rows and failure groups
from their delta rows, so they are right whether or not compaction has run; compaction
only keeps those sums short.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from jobs.conf import setting
from jobs.models import QueueSample
from jobs.queue import DatabaseJobQueueAdapter
from jobs.services import job_queue
from portico.ports.job import FAILURE_STATUSES

log = logging.getLogger("portico.maintenance")

# Samples older than this are deleted: the sparklines show the last hour.
SAMPLE_RETENTION = timedelta(hours=2)


@dataclass(frozen=True)
class Task:
    """One kind of upkeep: its name, the setting holding its interval in seconds, what it does.

    Tasks with the same ``lock`` never run at the same time (one advisory lock between them).
    """

    name: str
    interval_setting: str
    run: Callable[[DatabaseJobQueueAdapter], Any]
    lock: str = ""

    @property
    def lock_name(self) -> str:
        return self.lock or self.name

    def interval(self) -> float:
        return float(setting(self.interval_setting))


# -- the tasks ---------------------------------------------------------------------------------


def rescue(queue: DatabaseJobQueueAdapter) -> list[UUID]:
    """Retry (or dead-letter) every running job whose lease ran out; it logs what it rescued."""
    return queue.rescue_sync()


def prune(queue: DatabaseJobQueueAdapter) -> int:
    """Delete completed jobs older than PORTICO_RETENTION, and workers long silent."""
    pruned = queue.prune_sync()
    if pruned:
        log.info("pruned %d completed job(s) older than the retention period", pruned)
    return pruned


def compact(queue: DatabaseJobQueueAdapter) -> None:
    """Fold the delta rows of the queue counters and of the failure groups."""
    queue.compact_counters_sync()
    compact_failure_groups(queue.using)


def heal_failure_groups(queue: DatabaseJobQueueAdapter) -> list[str]:
    """Rebuild the failure groups of the queues whose groups drifted from the counts."""
    healed = []
    for status in sorted(s.value for s in FAILURE_STATUSES):
        if failure_drift(status, queue.using):
            healed += rebuild_failure_groups(status, queue.using)
    return healed


def record_samples(queue: DatabaseJobQueueAdapter, now: datetime | None = None) -> int:
    """Store each queue's totals as the sample of the current minute, unless it has one.

    Returns how many samples were stored. The overview's sparklines are the differences
    between consecutive minutes' samples.
    """
    now = now or timezone.now()
    minute = now.replace(second=0, microsecond=0)
    samples = QueueSample.objects.using(queue.using)
    if samples.filter(minute=minute).exists():
        return 0
    stats = queue.get_all_queue_stats_sync()
    # ignore_conflicts: two processes starting the same minute keep the first sample.
    stored = samples.bulk_create(
        [QueueSample(queue_name=s.queue_name, minute=minute, completed_total=s.completed_total,
                     failed_total=s.failed_runs_total) for s in stats],
        ignore_conflicts=True,
    )
    samples.filter(minute__lt=minute - SAMPLE_RETENTION).delete()
    return len(stored)


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("rescue", "PORTICO_RESCUE_INTERVAL", rescue),
    Task("prune", "PORTICO_PRUNE_INTERVAL", prune),
    Task("compact", "PORTICO_COMPACT_INTERVAL", compact),
    # Both rewrite the failure groups' rows: they take turns.
    Task("heal", "PORTICO_HEAL_INTERVAL", heal_failure_groups, lock="compact"),
    Task("samples", "PORTICO_SAMPLE_INTERVAL", record_samples),
)}


# -- running them ------------------------------------------------------------------------------


def exclusively(name: str, action: Callable[[], Any], using: str = "default") -> bool:
    """Run action unless another process is running the task ``name``; True if it ran.

    A PostgreSQL session advisory lock, not a transaction one: rescue and prune commit in
    batches. It goes with the connection if the process dies. SQLite serializes writers
    by itself, so there the action just runs.
    """
    conn = connections[using]
    try:
        if conn.vendor != "postgresql":
            action()
            return True
        key = f"portico_maintenance:{name}"
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key])
            if not cursor.fetchone()[0]:
                return False
        try:
            action()
        finally:
            with contextlib.suppress(DatabaseError), conn.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])
        return True
    finally:
        # A broken connection (the database restarted) is replaced before the next run; one
        # inside a caller's transaction is the caller's.
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


def run(name: str, queue: DatabaseJobQueueAdapter | None = None) -> bool:
    """Run the task ``name`` once, unless another process is running it; True if it ran.

    ``queue``: the adapter to work through (the process's one, jobs.services.job_queue(), if None).
    """
    task = TASKS[name]
    store = queue or job_queue()
    return exclusively(task.lock_name, lambda: task.run(store), store.using)


def run_due(last_run: dict[str, float], only: list[str] | None = None,
            queue: DatabaseJobQueueAdapter | None = None) -> float:
    """Run each task whose interval has passed since ``last_run`` (updated); seconds to the next.

    A task whose interval is 0 or less is off. A task that fails is logged and tried again
    at its next interval.
    """
    now = time.monotonic()
    wait = 60.0
    for name in only or list(TASKS):
        interval = TASKS[name].interval()
        if interval <= 0:
            continue
        due = last_run.get(name, float("-inf")) + interval
        if due <= now:
            try:
                run(name, queue)
            except Exception:  # the next interval tries again
                log.exception("maintenance %r failed; trying again in %gs", name, interval)
            last_run[name] = now = time.monotonic()
            due = now + interval
        wait = min(wait, max(0.0, due - now))
    return wait


# -- failure groups (PostgreSQL: SQLite has no fingerprint triggers) -------------------------

_DRIFT = (
    "SELECT coalesce(c.queue_name, g.queue_name) FROM "
    "(SELECT queue_name, SUM(value) AS n FROM portico_queue_counter WHERE name = %s "
    " GROUP BY queue_name) c FULL JOIN "
    "(SELECT queue_name, SUM(delta) AS n FROM portico_failure_delta WHERE status = %s "
    " GROUP BY queue_name) g ON g.queue_name = c.queue_name "
    "WHERE coalesce(c.n, 0) <> coalesce(g.n, 0)"
)


def compact_failure_groups(using: str = "default") -> None:
    """Fold the failure groups' delta rows into one row per group.

    Groups that emptied disappear, so a group that fills again starts a new first-seen.
    """
    conn = connections[using]
    if conn.vendor != "postgresql" or conn.in_atomic_block:
        return
    with transaction.atomic(using=using), conn.cursor() as cursor:
        cursor.execute(
            "WITH gone AS (DELETE FROM portico_failure_delta RETURNING status, queue_name, job_type, "
            "fingerprint, delta, first_seen, last_seen) "
            "INSERT INTO portico_failure_delta (status, queue_name, job_type, fingerprint, delta, "
            "first_seen, last_seen) SELECT status, queue_name, job_type, fingerprint, SUM(delta), "
            "MIN(first_seen), MAX(last_seen) FROM gone GROUP BY status, queue_name, job_type, "
            "fingerprint HAVING SUM(delta) <> 0"
        )


def failure_drift(status: str, using: str = "default") -> list[str]:
    """Queues whose failure groups do not add up to the status count (PostgreSQL only).

    Both tables change in the same transaction as every job, and one statement reads both,
    so any difference is real: job rows changed with the triggers off, or the job table
    was truncated without the group table.
    """
    conn = connections[using]
    if conn.vendor != "postgresql":
        return []
    with conn.cursor() as cursor:
        cursor.execute(_DRIFT, [status, status])
        return [row[0] for row in cursor.fetchall()]


def rebuild_failure_groups(status: str, using: str = "default") -> list[str]:
    """Recount the drifted queues' groups from the job table, with job writes paused."""
    conn = connections[using]
    if conn.vendor != "postgresql" or conn.in_atomic_block:
        return []
    with transaction.atomic(using=using), conn.cursor() as cursor:
        # Writers wait (briefly) so the recount and the replaced rows describe one moment.
        cursor.execute("LOCK TABLE portico_job IN SHARE MODE")
        cursor.execute(_DRIFT, [status, status])
        queues = [row[0] for row in cursor.fetchall()]
        if not queues:
            return []
        cursor.execute("DELETE FROM portico_failure_delta WHERE status = %s AND queue_name = ANY(%s)",
                       [status, queues])
        cursor.execute(
            "INSERT INTO portico_failure_delta (status, queue_name, job_type, fingerprint, delta, "
            "first_seen, last_seen) SELECT status, queue_name, job_type, "
            "portico_fingerprint(error_message), COUNT(*), MIN(coalesce(failed_at, created_at)), "
            "MAX(coalesce(failed_at, created_at)) FROM portico_job "
            "WHERE status = %s AND queue_name = ANY(%s) "
            "GROUP BY status, queue_name, job_type, portico_fingerprint(error_message)",
            [status, queues],
        )
    log.warning("rebuilt the %s failure groups of queue(s) %s: they did not match the counts",
                status, ", ".join(queues))
    return queues
