"""End-to-end throughput through Celery: raw no-op Celery tasks and Portico jobs on Celery, one run.

    .venv/bin/python bench/celery_e2e.py [--n 10000] [--chunk 1000] [--rounds 3]

(a) raw Celery: N no-op tasks sent with .delay() to a prefork worker (-c 2), no result
    backend, Celery's default acknowledgement and prefetch; each task INCRs a Redis counter,
    and the clock runs from the first .delay() until the counter reaches N.
(b) Portico on Celery: N jobs stored with enqueue_many_sync (chunks of --chunk, each commit
    ringing one doorbell), the same worker (-c 2, the project's Celery settings); the clock
    runs from the first enqueue until the queue's counters show N completed.

Both workers are started and warmed up before their clock starts, log at WARNING, and use
Redis database 14 (flushed) as broker. Portico's jobs live in their own PostgreSQL database,
portico_bench_celery (created and migrated if missing, emptied before each round), with
DJANGO_DEBUG=0. Prints each round's rates, the medians and their ratio.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import redis
from celery import Celery

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
BROKER_URL = "redis://127.0.0.1:6379/14"
DATABASE = "portico_bench_celery"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
DONE_KEY = "celery_e2e:done"
JOB_TYPE = "bench.noop"
QUEUE = "bench"

# (a): a bare Celery app, as a team would write one. Never the current app: the Portico
# worker imports this module too, and its doorbells must keep going through the project's.
raw_app = Celery("celery_e2e", broker=BROKER_URL, set_as_current=False)
raw_app.conf.update(task_ignore_result=True, result_backend=None,
                    broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
_redis: redis.Redis | None = None


@raw_app.task(name="celery_e2e.noop")
def noop() -> None:
    global _redis
    if _redis is None:  # one client per pool process
        _redis = redis.Redis.from_url(BROKER_URL)
    _redis.incr(DONE_KEY)


def _register_portico_handler() -> None:
    """(b): the no-op job handler, registered in the Portico worker (celery --include)."""
    from jobs.registry import job_handler

    @job_handler(JOB_TYPE)
    async def portico_noop(job) -> None:
        return None


if os.environ.get("CELERY_E2E_PORTICO_WORKER") == "1":
    _register_portico_handler()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Worker:
    """A celery worker in its own process group, killed (group and all) on exit."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.log_file = tempfile.NamedTemporaryFile(prefix="celery-e2e-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", *args, "--pool", "prefork", "--concurrency", "2",
             "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=PROJECT_ROOT, env=env, stdout=self.log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def check(self) -> None:
        if self.process.poll() is not None:
            tail = Path(self.log_file.name).read_text()[-3000:]
            raise RuntimeError(f"the celery worker exited:\n{tail}")

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        self.log_file.close()
        os.unlink(self.log_file.name)


def wait_until(done: Callable[[], bool], worker: Worker, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not done():
        worker.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {timeout}s")
        time.sleep(0.02)  # polling more often would take CPU from the worker measured
    return time.perf_counter()


def raw_celery(n: int, r: redis.Redis, timeout: float) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), str(PROJECT_ROOT)])}
    with Worker(["-A", "celery_e2e:raw_app", "worker", "-Q", "celery"], env) as worker:
        r.delete(DONE_KEY)
        noop.delay()  # warm-up: the worker consumes
        wait_until(lambda: int(r.get(DONE_KEY) or 0) == 1, worker, 60)
        r.delete(DONE_KEY)
        started = time.perf_counter()
        for _ in range(n):
            noop.delay()
        finished = wait_until(lambda: int(r.get(DONE_KEY) or 0) >= n, worker, timeout)
    return n / (finished - started)


def portico_celery(n: int, chunk: int, timeout: float) -> float:
    from django.db import connection

    from jobs.queue import DatabaseJobQueueAdapter
    from portico.ports.job import Job

    store = DatabaseJobQueueAdapter()
    with connection.cursor() as cursor:
        for table in ("portico_job_attempt", "portico_job", "portico_queue_counter"):
            cursor.execute(f"DELETE FROM {table}")
    env = {**os.environ, "CELERY_E2E_PORTICO_WORKER": "1",
           "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(BENCH_DIR)])}
    args = ["-A", "portico_site", "worker", "-Q", f"portico.{QUEUE}", "--include", "celery_e2e"]
    with Worker(args, env) as worker:
        def completed(count: int) -> Callable[[], bool]:
            return lambda: store.get_queue_stats_sync(QUEUE).completed_count >= count

        store.enqueue_many_sync([Job(id=uuid4(), queue_name=QUEUE, job_type=JOB_TYPE, payload={})])
        wait_until(completed(1), worker, 60)  # warm-up: the worker consumes
        jobs = [Job(id=uuid4(), queue_name=QUEUE, job_type=JOB_TYPE, payload={"i": i}) for i in range(n)]
        started = time.perf_counter()
        for start in range(0, n, chunk):
            store.enqueue_many_sync(jobs[start:start + chunk])
        finished = wait_until(completed(n + 1), worker, timeout)
    stats = store.get_queue_stats_sync(QUEUE)
    if (stats.completed_count, stats.failed_count, stats.dead_letter_count) != (n + 1, 0, 0):
        raise RuntimeError(f"unexpected outcome: {stats}")
    store.close_sync()
    return n / (finished - started)


def setup_django() -> None:
    os.environ.update({
        "DATABASE_URL": DATABASE_URL,
        "DJANGO_DEBUG": "0",
        "DJANGO_SETTINGS_MODULE": "portico_site.settings",
        "CELERY_BROKER_URL": BROKER_URL,
        "PORTICO_DISPATCH": "celery",
        "DJANGO_LOG_LEVEL": "WARNING",
    })
    os.environ.setdefault("DJANGO_SECRET_KEY", "celery-e2e-benchmark-key")
    sys.path[:0] = [str(PROJECT_ROOT), str(BENCH_DIR)]
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="tasks / jobs per round")
    parser.add_argument("--chunk", type=int, default=1000, help="jobs per enqueue_many_sync")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    setup_django()
    r = redis.Redis.from_url(BROKER_URL)
    raw_rates, portico_rates = [], []
    try:
        for round_number in range(1, args.rounds + 1):
            r.flushdb()
            raw_rates.append(raw_celery(args.n, r, args.timeout))
            r.flushdb()
            portico_rates.append(portico_celery(args.n, args.chunk, args.timeout))
            log(f"round {round_number}: raw Celery {raw_rates[-1]:,.0f} tasks/s, "
                f"Portico on Celery {portico_rates[-1]:,.0f} jobs/s")
    finally:
        r.flushdb()
    raw, portico = statistics.median(raw_rates), statistics.median(portico_rates)
    print(f"n={args.n} per round, {args.rounds} rounds, prefork -c 2, Redis broker, medians:")
    print(f"  raw Celery no-op tasks      {raw:>10,.0f} /s")
    print(f"  Portico jobs on Celery      {portico:>10,.0f} /s")
    print(f"  Portico / raw Celery        {portico / raw:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
