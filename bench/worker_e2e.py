"""End-to-end throughput of the built-in worker against the raw database adapter loop, in one run.

    .venv/bin/python bench/worker_e2e.py [--n 5000] [--processes 1,2] [--rounds 3]
                                         [--concurrency 10] [--batch 10] [--json PATH]

For each number of processes P, N no-op jobs go through:

- ``worker``: P ``manage.py portico_worker --concurrency C --batch B`` processes running the
  ``bench.noop`` handler through WorkerManager and JobExecutor (heartbeats, maintenance
  timers, the per-job log line: everything a production worker does);
- ``raw``: P processes looping ``dequeue_many_sync(B)`` + ``acknowledge_many_sync`` on
  ``DatabaseJobQueueAdapter``: the store's own ceiling, with nothing run in between.

Both start the same way: the jobs are enqueued scheduled far ahead, the processes start and
report ready, then one statement makes every job due (and NOTIFYs) and the clock starts; it
stops when an outside connection counts N completed jobs. The modes alternate, ``--rounds``
times each, and the median counts, so both see the same machine. Needs PostgreSQL on
127.0.0.1:5432 (user postgres, trust); the database portico_bench_worker is created, migrated
and dropped by the run, DJANGO_DEBUG=0.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE = "portico_bench_worker"
SERVER = "postgres://postgres@127.0.0.1:5432"
SETTINGS_MODULE = "bench_worker_settings"
# The worker's settings: the project's, plus the no-op handler (written to a temp folder).
SETTINGS = """
from portico_site.settings import *  # noqa: F403
PORTICO_HANDLERS = ["bench_worker_settings.Noop"]

from portico.ports.job import JobResult
from portico.ports.job_handler import JobHandler


class Noop(JobHandler):
    job_type = "bench.noop"

    async def handle(self, job):
        return JobResult(success=True)
"""


def child_env(settings_dir: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"{SERVER}/{DATABASE}",
        "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "benchmark-only-not-secret",
        "PYTHONPATH": os.pathsep.join([settings_dir, str(REPO_ROOT)]),
    }


def setup_django(settings_dir: str) -> None:
    os.environ.update(child_env(settings_dir))
    sys.path[:0] = [settings_dir, str(REPO_ROOT)]
    import django

    django.setup()


# -- the raw loop (a child process) ---------------------------------------------------------


def raw_child(batch: int) -> None:
    """Claim and acknowledge until stopped; ready/go over stdout and stdin."""
    from django.db import connection

    from jobs.queue import DatabaseJobQueueAdapter

    queue = DatabaseJobQueueAdapter()
    connection.ensure_connection()  # connected before the clock starts
    print("ready", flush=True)
    sys.stdin.readline()
    while True:
        jobs = queue.dequeue_many_sync("default", batch)
        if jobs:
            queue.acknowledge_many_sync(jobs)
        else:
            time.sleep(0.001)  # nothing due: the parent stops this process when all are done


# -- the parent -----------------------------------------------------------------------------


def admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def migrate(settings_dir: str) -> None:
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO_ROOT,
                   env=child_env(settings_dir), check=True)


def fill(n: int) -> None:
    """n no-op jobs, scheduled a day ahead so that none runs before the clock starts."""
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    from django.db import connection

    from jobs.queue import DatabaseJobQueueAdapter
    from portico.ports.job import Job

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE portico_job_attempt, portico_job, portico_queue_counter")
    later = datetime.now(UTC) + timedelta(days=1)
    DatabaseJobQueueAdapter().enqueue_many_sync([
        Job(id=uuid4(), queue_name="default", job_type="bench.noop", payload={}, scheduled_at=later)
        for _ in range(n)
    ])


def release_and_time(n: int, timeout: float) -> float:
    """Make every job due at once, wake the waiting workers, and time until n are completed."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE portico_job SET run_at = now() WHERE status = 'scheduled'")
        # Statistics that know the jobs are due (this transaction's rows count): left to
        # autovacuum, the claims of some runs would be planned for jobs due tomorrow, and
        # scan and sort every due job each time.
        cursor.execute("ANALYZE portico_job")
        cursor.execute("NOTIFY portico_jobs, 'default'")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        while True:
            # The maintained counter, not a count of the rows: the watching must not load the
            # two cores the workers and the database share.
            cursor.execute("SELECT COALESCE(SUM(value), 0) FROM portico_queue_counter "
                           "WHERE queue_name = 'default' AND name = 'completed'")
            if cursor.fetchone()[0] >= n:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"not all {n} jobs completed within {timeout}s")
            time.sleep(0.01)


def check_all_completed(n: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT status, COUNT(*) FROM portico_job GROUP BY status")
        counts = dict(cursor.fetchall())
    if counts != {"completed": n}:
        raise RuntimeError(f"expected {n} completed jobs, found {counts}")


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_raw(n: int, processes: int, batch: int, settings_dir: str, timeout: float) -> float:
    fill(n)
    children = [
        subprocess.Popen([sys.executable, __file__, "--raw-child", "--batch", str(batch)],
                         cwd=REPO_ROOT, env=child_env(settings_dir), text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in range(processes)
    ]
    try:
        for child in children:
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("a raw loop process did not start")
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        elapsed = release_and_time(n, timeout)
    finally:
        stop(children)
    check_all_completed(n)
    return n / elapsed


def run_worker(n: int, processes: int, concurrency: int, batch: int, settings_dir: str,
               timeout: float, logs: Path) -> float:
    fill(n)
    outputs = [logs / f"worker-{index}.log" for index in range(processes)]
    workers = [
        subprocess.Popen([sys.executable, "manage.py", "portico_worker", "--concurrency",
                          str(concurrency), "--batch", str(batch)],
                         cwd=REPO_ROOT, env=child_env(settings_dir),
                         stdout=subprocess.DEVNULL, stderr=output.open("wb"))
        for output in outputs
    ]
    try:
        deadline = time.monotonic() + 60
        while not all("portico_worker started" in output.read_text() for output in outputs):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise RuntimeError("a worker did not start: " + outputs[0].read_text()[-2000:])
            time.sleep(0.02)
        elapsed = release_and_time(n, timeout)
    finally:
        stop(workers)
    if any(worker.returncode != 0 for worker in workers):
        raise RuntimeError(f"a worker exited with {[w.returncode for w in workers]}")
    check_all_completed(n)
    return n / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="jobs per run")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode, alternating")
    parser.add_argument("--concurrency", type=int, default=10, help="portico_worker --concurrency")
    parser.add_argument("--batch", type=int, default=10, help="claim size of both modes")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="portico-bench-") as settings_dir:
        (Path(settings_dir) / f"{SETTINGS_MODULE}.py").write_text(SETTINGS)
        if args.raw_child:
            setup_django(settings_dir)
            raw_child(args.batch)
            return 0
        admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin(f"CREATE DATABASE {DATABASE}")
        try:
            migrate(settings_dir)
            setup_django(settings_dir)
            results = measure(args, settings_dir)
        finally:
            from django.db import connections

            connections.close_all()
            admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    report(args, results)
    return 0


def measure(args: argparse.Namespace, settings_dir: str) -> dict[int, dict[str, list[float]]]:
    results: dict[int, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="portico-bench-logs-") as logs:
        for processes in [int(p) for p in args.processes.split(",")]:
            runs: dict[str, list[float]] = {"raw": [], "worker": []}
            for round_number in range(args.rounds):
                # Alternate which goes first, so neither always runs on a warmer machine.
                order = ("raw", "worker") if round_number % 2 == 0 else ("worker", "raw")
                for mode in order:
                    if mode == "raw":
                        rate = run_raw(args.n, processes, args.batch, settings_dir, args.timeout)
                    else:
                        rate = run_worker(args.n, processes, args.concurrency, args.batch,
                                          settings_dir, args.timeout, Path(logs))
                    runs[mode].append(rate)
                    print(f"  {processes} process(es), {mode:6}: {rate:8,.0f} jobs/s", flush=True)
            results[processes] = runs
    return results


def report(args: argparse.Namespace, results: dict[int, dict[str, list[float]]]) -> None:
    print(f"\n{args.n} no-op jobs; portico_worker --concurrency {args.concurrency} --batch "
          f"{args.batch}; raw loop claims {args.batch} at a time; median of {args.rounds}")
    print(f"{'processes':>9}  {'raw jobs/s':>10}  {'worker jobs/s':>13}  {'worker/raw':>10}")
    summary: dict[str, Any] = {"n": args.n, "concurrency": args.concurrency, "batch": args.batch,
                               "rounds": args.rounds, "runs": {}}
    for processes, runs in results.items():
        raw, worker = statistics.median(runs["raw"]), statistics.median(runs["worker"])
        print(f"{processes:>9}  {raw:>10,.0f}  {worker:>13,.0f}  {worker / raw:>10.2f}")
        summary["runs"][processes] = {**runs, "raw_median": raw, "worker_median": worker,
                                      "ratio": worker / raw}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
