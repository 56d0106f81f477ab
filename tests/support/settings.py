"""Settings for worker processes the tests start: the project's, plus the test handlers and short timers."""
from __future__ import annotations

import os

from portico_site.settings import *  # noqa: F403

PORTICO_HANDLERS = [
    "tests.support.handlers.NoopHandler",
    "tests.support.handlers.RecordHandler",
    "tests.support.handlers.SleepHandler",
    "tests.support.handlers.FailHandler",
    "tests.support.handlers.PoisonHandler",
    "tests.support.handlers.count_queue_jobs",
]
PORTICO_LEASE_SECONDS = 3.0
PORTICO_HEARTBEAT_SECONDS = 0.5
PORTICO_POLL_INTERVAL = 0.1
PORTICO_RETRY_BASE = 0.05
PORTICO_RETRY_CAP = 0.2
PORTICO_RESCUE_INTERVAL = 0.5
# A test that needs a worker with a short grace period sets this for the process it starts.
PORTICO_GRACE_PERIOD = float(os.environ.get("PORTICO_TEST_GRACE_PERIOD", "10.0"))
