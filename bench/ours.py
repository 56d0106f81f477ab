"""Our side of the benchmark: Portico Jobs' `jobs.queue.DatabaseJobQueueAdapter` on PostgreSQL.

`run.py` calls `run_ours(n, workers)` first and then the peers (`peers.py`), in the same run,
and prints the figures side by side. The workload must be the one the peers run, so the
ratios mean something:

- database `bench_portico` on 127.0.0.1:5432 (user postgres), created and dropped by the run
  itself (see `peers.scratch_database`), migrated with the project's migrations;
  `synchronous_commit` left at the server default (on);
- single enqueue: `n_single` jobs, one `enqueue` call (one transaction) each;
- bulk enqueue: `enqueue_many` in chunks of `peers.BULK_CHUNK` jobs; the jobs of each bulk
  fill are the ones the following end-to-end run consumes; the job table is emptied and
  VACUUM ANALYZEd before each fill and ANALYZEd after it (as the peers' tables are, so no
  system is planned against the statistics of an empty table);
- end to end, for each W in `workers`: `n` no-op jobs already enqueued, W worker *processes*
  (multiprocessing "spawn" or subprocesses), started, connected and waiting on a
  `peers.Flag`; the clock starts when they are released and stops when an outside
  connection sees the queue's counters report no job waiting or running (the last
  acknowledgement committed, see OBSERVER); afterwards check that exactly n jobs are
  COMPLETED, by the counters and by the rows;
- pickup latency: one idle worker; one job enqueued at a time (`PICKUP_WARMUP` discarded,
  then `pickup_samples` measured), latency = `time.time()` at the start of the handler minus
  `time.time()` right after the enqueue call returned (its commit);
- every wait bounded (`timeout`), every process stopped and the database dropped, even on
  failure (`peers.start_workers`, `peers.stop_processes`, `peers.scratch_database` do this).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence
from uuid import uuid4

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS_DB = "bench_portico"
UNAVAILABLE = "jobs.queue.DatabaseJobQueueAdapter is not available yet"


class OursUnavailable(RuntimeError):
    """The project's database adapter cannot be imported (yet)."""


def configure_django() -> None:
    """Point the project's settings at the benchmark database and set Django up."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portico_site.settings")
    os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{OURS_DB}")
    # DEBUG stays off (it records every query); the settings then want a secret key.
    os.environ.setdefault("DJANGO_SECRET_KEY", "portico-benchmark-only-not-secret")
    import django

    django.setup()


def adapter_available() -> tuple[bool, str]:
    """(True, "") when `jobs.queue.DatabaseJobQueueAdapter` imports, else (False, why)."""
    try:
        configure_django()
        from jobs.queue import DatabaseJobQueueAdapter  # noqa: F401
    except Exception as exc:
        return False, f"{UNAVAILABLE} ({type(exc).__name__}: {exc})"
    return True, ""


# How the end-to-end clock sees the last acknowledgement committed: the queue's counters,
# which each acknowledgement changes in its own transaction. (A scan for a row that is not
# completed walks past every completed row, so its cost grows with n and through the run;
# the counters cost about the same at any n: ~3 us of database CPU per job at n = 30,000,
# reported as "observer" and left out of the database's CPU per job.)
OBSERVER = ("SELECT coalesce(sum(value), 0) FROM portico_queue_counter WHERE queue_name = 'bench' "
            "AND name IN ('pending', 'scheduled', 'retrying', 'running')")
OURS_BATCH = 100  # jobs claimed (and acknowledged) per statement, as pgqueuer's batch size


def _ours_env(db_dsn: str) -> None:
    """Settings for a spawned worker: the benchmark database, DEBUG off."""
    dbname = dict(part.split("=", 1) for part in db_dsn.split())["dbname"]
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{dbname}"
    os.environ["DJANGO_DEBUG"] = "0"
    configure_django()


def _ours_worker(db_dsn: str, batch: int, samples: Any, ready: Any, go: Any, stop: Any,
                 index: int) -> None:
    """A worker process: claim a batch, run the no-op handler on each job, acknowledge the batch."""
    import peers

    peers._worker_setup()
    _ours_env(db_dsn)
    from jobs.queue import DatabaseJobQueueAdapter

    queue = DatabaseJobQueueAdapter()
    queue.get_queue_stats_sync("bench")  # connected before the clock starts

    def handle(job) -> None:  # the no-op handler; in pickup runs it reports when it started
        if samples is not None:
            samples.put((int(job.payload["i"]), time.time()))

    ready.set()
    if not go.wait(peers.RUN_TIMEOUT):
        return
    if samples is None:
        while not stop.is_set():
            claimed = queue.dequeue_many_sync("bench", batch)
            if not claimed:
                return  # drained
            for job in claimed:
                handle(job)
            queue.acknowledge_many_sync(claimed)
        return

    async def idle_worker() -> None:
        # The product's waiting path: a blocking dequeue woken by LISTEN/NOTIFY.
        while not stop.is_set():
            job = await queue.dequeue("bench", timeout=0.5)
            if job is not None:
                handle(job)
                await queue.acknowledge(job.id, claim=job)

    asyncio.run(idle_worker())


def run_ours(
    n: int,
    workers: Sequence[int] = (1, 2, 4),
    *,
    n_single: int = 5_000,
    pickup_samples: int = 100,
    timeout: float = 240.0,
) -> dict[str, Any]:
    """Run the benchmark workload (see the module docstring) on our database adapter.

    Returns the same keys as every `peers.bench_<peer>` function:

        {
            "version": str,                      # the git commit of the project
            "config": {...},                     # what was run (n, n_single, batch size, ...)
            "single_enqueue_per_s": float,
            "bulk_enqueue_per_s": float,         # median over the bulk fills
            "bulk_enqueue_runs": [float, ...],
            "e2e_per_s": {W: float for W in workers},
            "pickup_p50_ms": float,
            "pickup_p99_ms": float,
            "pickup_samples": int,
            "pickup_max_ms": float,
        }

    Raises `OursUnavailable` while `jobs.queue.DatabaseJobQueueAdapter` cannot be imported.
    """
    import peers

    ok, why = adapter_available()
    if not ok:
        raise OursUnavailable(why)
    out: dict[str, Any] = {
        "version": _git_commit(),
        "config": {"batch_size": OURS_BATCH, "bulk_chunk": peers.BULK_CHUNK, "n": n,
                   "n_single": n_single, "worker": "adapter loop: dequeue_many_sync, no-op "
                   "handler per job, acknowledge_many_sync", "pickup": "async dequeue (LISTEN/NOTIFY)"},
    }
    with peers.scratch_database(OURS_DB) as db_dsn:
        _ours_env(db_dsn)
        from django.core.management import call_command
        from django.db import connection

        from jobs.queue import DatabaseJobQueueAdapter
        from portico.ports.job import Job

        call_command("migrate", verbosity=0)
        queue = DatabaseJobQueueAdapter()

        def job(i: int, queue_name: str = "bench") -> Job:
            return Job(id=uuid4(), queue_name=queue_name, job_type="bench.noop", payload={"i": i})

        peers.log(f"ours: single enqueue x{n_single}")
        began = time.perf_counter()
        for i in range(n_single):
            queue.enqueue_sync(job(i, "single"))
        out["single_enqueue_per_s"] = n_single / (time.perf_counter() - began)

        bulk_rates, e2e = [], {}
        for w in workers:
            peers._pg_exec(db_dsn, "TRUNCATE portico_job, portico_job_attempt, portico_queue_counter",
                           "VACUUM ANALYZE portico_job")
            jobs = [job(i) for i in range(n)]
            began = time.perf_counter()
            for start in range(0, n, peers.BULK_CHUNK):
                queue.enqueue_many_sync(jobs[start:start + peers.BULK_CHUNK])
            bulk_rates.append(n / (time.perf_counter() - began))
            peers._pg_exec(db_dsn, "ANALYZE portico_job")
            connection.close()
            peers.log(f"ours: e2e {n} jobs, {w} worker(s)")
            e2e[w] = peers._consume_run(
                _ours_worker, (db_dsn, OURS_BATCH, None), w, n, db_dsn,
                OBSERVER, timeout, out.setdefault("e2e_cpu_us_per_job", {}),
            )
            done = queue.get_queue_stats_sync("bench").completed_count
            rows = peers._pg_exec(db_dsn, "SELECT count(*) FROM portico_job WHERE status = 'completed'")[0][0][0]
            if done != n or rows != n:
                raise RuntimeError(f"ours completed {done} jobs ({rows} rows), expected {n}")
        out["bulk_enqueue_per_s"] = statistics.median(bulk_rates)
        out["bulk_enqueue_runs"] = bulk_rates
        out["e2e_per_s"] = e2e
        if pickup_samples:
            peers.log(f"ours: pickup latency x{pickup_samples}")
            peers._pg_exec(db_dsn, "TRUNCATE portico_job, portico_job_attempt, portico_queue_counter",
                           "VACUUM ANALYZE portico_job")
            latencies = peers._pickup_run(
                _ours_worker, (db_dsn, OURS_BATCH), (), lambda i: queue.enqueue_sync(job(i)),
                pickup_samples,
            )
            out.update(peers.pickup_figures(latencies))
        connection.close()
        queue.close_sync()
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"
