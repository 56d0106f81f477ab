"""Upkeep of the dashboard's small tables: per-minute throughput samples and the failure groups.

The overview and the dead-letter page call these as they read, so the tables stay current
while anyone is watching, with a write at most once a minute (samples) or a few seconds
(compaction) per process, never per request.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.db import connection, transaction

from jobs.models import QueueSample
from portico.ports.job import QueueStats

log = logging.getLogger("portico.dashboard")

# Samples older than this are deleted: the sparklines show the last hour.
SAMPLE_RETENTION = timedelta(hours=2)
COMPACT_EVERY = 5.0
# A drifted group table is rebuilt at most this often per process (it locks out job writes).
REBUILD_EVERY = 60.0

_lock = threading.Lock()
_last_compaction = 0.0
_last_rebuild: dict[str, float] = {}


def failed_total(stats: QueueStats) -> int:
    """Runs that failed: retried, dead-lettered, or failed for good (cancellations too)."""
    return stats.failed_total + stats.dead_lettered_total + stats.retried_total


def record_samples(stats: Sequence[QueueStats], now: datetime) -> None:
    """Store each queue's totals as the sample of the current minute, unless it has one."""
    if not stats:
        return
    minute = now.replace(second=0, microsecond=0)
    if QueueSample.objects.filter(minute=minute).exists():
        return
    # ignore_conflicts: two processes starting the same minute keep the first sample.
    QueueSample.objects.bulk_create(
        [QueueSample(queue_name=s.queue_name, minute=minute, completed_total=s.completed_total,
                     failed_total=failed_total(s)) for s in stats],
        ignore_conflicts=True,
    )
    QueueSample.objects.filter(minute__lt=minute - SAMPLE_RETENTION).delete()


def compact_failure_groups(*, force: bool = False) -> None:
    """Fold the failure groups' delta rows into one row per group (PostgreSQL only).

    Groups that emptied disappear, so a group that fills again starts a new first-seen.
    """
    global _last_compaction
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return
    with _lock:
        if not force and time.monotonic() - _last_compaction < COMPACT_EVERY:
            return
        _last_compaction = time.monotonic()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(hashtext('portico_failure_delta'))")
        if not cursor.fetchone()[0]:
            return  # another process is compacting
        cursor.execute(
            "WITH gone AS (DELETE FROM portico_failure_delta RETURNING status, queue_name, job_type, "
            "fingerprint, delta, first_seen, last_seen) "
            "INSERT INTO portico_failure_delta (status, queue_name, job_type, fingerprint, delta, "
            "first_seen, last_seen) SELECT status, queue_name, job_type, fingerprint, SUM(delta), "
            "MIN(first_seen), MAX(last_seen) FROM gone GROUP BY status, queue_name, job_type, "
            "fingerprint HAVING SUM(delta) <> 0"
        )


_DRIFT = (
    "SELECT coalesce(c.queue_name, g.queue_name) FROM "
    "(SELECT queue_name, SUM(value) AS n FROM portico_queue_counter WHERE name = %s "
    " GROUP BY queue_name) c FULL JOIN "
    "(SELECT queue_name, SUM(delta) AS n FROM portico_failure_delta WHERE status = %s "
    " GROUP BY queue_name) g ON g.queue_name = c.queue_name "
    "WHERE coalesce(c.n, 0) <> coalesce(g.n, 0)"
)


def failure_drift(status: str) -> list[str]:
    """Queues whose failure groups do not add up to the status count (PostgreSQL only).

    Both tables change in the same transaction as every job, and one statement reads both,
    so any difference is real: job rows changed with the triggers off, or the job table
    was truncated without the group table.
    """
    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        cursor.execute(_DRIFT, [status, status])
        return [row[0] for row in cursor.fetchall()]


def heal_failure_groups(status: str) -> list[str]:
    """Rebuild the groups of queues that drifted; at most once a minute per process and status."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return []
    with _lock:
        if time.monotonic() - _last_rebuild.get(status, -REBUILD_EVERY) < REBUILD_EVERY:
            return []
        _last_rebuild[status] = time.monotonic()
    if not failure_drift(status):
        return []
    return rebuild_failure_groups(status)


def rebuild_failure_groups(status: str) -> list[str]:
    """Recount the drifted queues' groups from the job table, with job writes paused."""
    with transaction.atomic(), connection.cursor() as cursor:
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
