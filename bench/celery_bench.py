"""The Celery peer of the benchmark: a Celery 5 app on Redis with no-op tasks.

Started as `python -m celery -A celery_bench worker ...` from bench/ by `peers.py`. Kept apart
from peers.py so that the worker processes import nothing but Celery and redis.

The tasks count their own completions in Redis (INCR), since there is no result backend:
`task_ignore_result=True`, `result_backend=None`. Every key lives in the benchmark's own
Redis database (15 by default), which `peers.py` flushes before it starts.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

BROKER_URL = os.environ.get("BENCH_CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")

DONE_KEY = "bench:done"  # INCR'd by every no-op task
PING_KEY = "bench:ping"  # INCR'd by the readiness probe
PICKUP_KEY = "bench:pickup"  # RPUSH'd "<index> <time.time() at task start>"

BENCH_QUEUE = "bench"  # the queue the measured jobs go to
WARMUP_QUEUE = "bench_warmup"  # the queue the worker consumes from the start

app = Celery("portico_bench", broker=BROKER_URL)
app.conf.update(
    result_backend=None,
    task_ignore_result=True,
    task_routes={
        "bench.noop": {"queue": BENCH_QUEUE},
        "bench.pickup": {"queue": BENCH_QUEUE},
        "bench.ping": {"queue": WARMUP_QUEUE},
    },
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_redis: redis.Redis | None = None


def _r() -> redis.Redis:
    """One Redis client per (prefork child) process."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER_URL)
    return _redis


@app.task(name="bench.noop")
def noop() -> None:
    _r().incr(DONE_KEY)


@app.task(name="bench.pickup")
def pickup(index: int, enqueued_at: float) -> None:
    started = time.time()
    _r().rpush(PICKUP_KEY, f"{index} {started!r}")


@app.task(name="bench.ping")
def ping() -> None:
    _r().incr(PING_KEY)
