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
    # Completed jobs older than this many seconds are pruned.
    "PORTICO_RETENTION": 7 * 24 * 3600,
    # Retry backoff: the n-th retry waits between half and all of min(cap, base * 2**(n-1)).
    "PORTICO_RETRY_BASE": 2.0,
    "PORTICO_RETRY_CAP": 3600.0,
    # Longest a single run may take, in seconds (None: no limit).
    "PORTICO_JOB_TIMEOUT": None,
    # Seconds a stopping worker gives jobs in flight before releasing them.
    "PORTICO_GRACE_PERIOD": 30.0,
    "PORTICO_RESCUE_INTERVAL": 15.0,
    "PORTICO_PRUNE_INTERVAL": 3600.0,
}


def setting(name: str) -> Any:
    return getattr(settings, name, DEFAULTS[name])
