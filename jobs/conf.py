"""Portico's Django settings with their defaults, read when asked so override_settings works."""
from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Dotted paths of JobHandler classes, instances, or @job_handler-decorated callables.
    "PORTICO_HANDLERS": [],
    # A claim holds this long without a heartbeat; rescue takes back what runs out.
    "PORTICO_LEASE_SECONDS": 60.0,
    "PORTICO_HEARTBEAT_SECONDS": 15.0,
    # Seconds between claim attempts of a waiting worker that gets no notification.
    "PORTICO_POLL_INTERVAL": 0.5,
    "PORTICO_MAX_PAYLOAD_BYTES": 256 * 1024,
    # The hot statements (claims, acknowledgements, single enqueues) as server-side prepared
    # statements. Turn off behind a transaction-pooling PgBouncer older than 1.21.
    "PORTICO_PREPARED_STATEMENTS": True,
    # Completed jobs older than this many seconds are pruned.
    "PORTICO_RETENTION": 7 * 24 * 3600,
    # Retry backoff: the n-th retry waits between half and all of min(cap, base * 2**(n-1)).
    "PORTICO_RETRY_BASE": 2.0,
    "PORTICO_RETRY_CAP": 3600.0,
    # Longest a single run may take, in seconds (None: no limit).
    "PORTICO_JOB_TIMEOUT": None,
    # Seconds a stopping worker gives jobs in flight before releasing them.
    "PORTICO_GRACE_PERIOD": 30.0,
    # Seconds between rescues and between prunes, by Celery beat or the built-in worker (in
    # which 0 turns one off, as for PORTICO_COMPACT_INTERVAL below).
    "PORTICO_RESCUE_INTERVAL": 15.0,
    "PORTICO_PRUNE_INTERVAL": 3600.0,
    # Cron schedules manage.py portico_scheduler turns into jobs (format in the README), and
    # the seconds between its checks for due fire times.
    "PORTICO_SCHEDULES": [],
    "PORTICO_SCHEDULER_INTERVAL": 1.0,
    # A bearer token GET /metrics requires (None: open; manage.py check --deploy warns).
    "PORTICO_METRICS_TOKEN": None,
    # The webhook (POST /webhooks/jobs): its bearer token (None refuses every request), the
    # job types it may create (none unless listed), and the largest body it reads, in bytes.
    "PORTICO_WEBHOOK_TOKEN": None,
    "PORTICO_WEBHOOK_JOB_TYPES": [],
    "PORTICO_WEBHOOK_MAX_BYTES": 1024 * 1024,
    # Told, after commit, the names of queues that just got due jobs: a dotted path to a
    # callable taking them ("jobs.dispatch.ring" when Celery runs the jobs), or None.
    "PORTICO_DISPATCH": None,
    # Celery: the most jobs one run_queue task claims at once, and the seconds it keeps
    # claiming before it hands the worker process back (ringing again if work is left).
    "PORTICO_CELERY_BATCH": 10,
    "PORTICO_CELERY_TASK_BUDGET": 10.0,
    # Seconds between Celery beat's sweeps (a doorbell for every queue with due jobs), and
    # between foldings of the counter table (by beat, or by the built-in worker).
    "PORTICO_SWEEP_INTERVAL": 0.5,
    "PORTICO_COMPACT_INTERVAL": 10.0,
    # Seconds between the maintenance's checks that the failure groups add up to the counts
    # (a rebuild, which pauses job writes briefly, only when they do not), and between its
    # looks at whether this minute's throughput sample is taken yet. 0 turns one off.
    "PORTICO_HEAL_INTERVAL": 60.0,
    "PORTICO_SAMPLE_INTERVAL": 5.0,
    # The dashboard and admin mask the value of every key (at any depth of a payload,
    # metadata or result) whose name contains one of these, ignoring case.
    "PORTICO_REDACT_KEYS": ["password", "token", "secret", "authorization"],
    # Jobs one transaction of a requeue, cancel or discard over a filter changes.
    "PORTICO_BULK_BATCH": 1000,
    # Seconds a due job may wait, with nothing running or finishing in its queue, before the
    # overview calls the queue stalled (no live worker).
    "PORTICO_STALL_SECONDS": 30.0,
}


def setting(name: str) -> Any:
    return getattr(settings, name, DEFAULTS[name])
