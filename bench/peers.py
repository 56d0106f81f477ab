"""The peer side of the Portico Jobs benchmark: pgqueuer, procrastinate and Celery + Redis.

Each `bench_<peer>(n, ...)` runs the same workload against the local services and returns a
dict of figures with the same keys as `ours.run_ours` (see `FIGURE_KEYS`):

- ``single_enqueue_per_s``: one job per call (one transaction / one broker round trip each),
  over ``n_single`` jobs;
- ``bulk_enqueue_per_s``: the peer's bulk path, in chunks of ``BULK_CHUNK`` jobs (median of
  the fills made for the end-to-end runs);
- ``e2e_per_s``: ``{workers: jobs/s}`` -- ``n`` no-op jobs enqueued first, then ``workers``
  worker processes consume them; measured from the moment the (already started and
  connected) workers are released until an outside observer sees the last completion
  committed;
- ``pickup_p50_ms`` / ``pickup_p99_ms``: an idle worker, one job enqueued at a time; time
  from the enqueue's commit (the enqueue call returned) to the start of the handler.

Every worker is a separate OS process (multiprocessing "spawn", or a subprocess for Celery).
Every wait is bounded; processes are killed and databases dropped even on failure.

    bench/.venv/bin/python bench/peers.py [--n N] [--peers pgqueuer,procrastinate,celery]
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

PG_SERVER = os.environ.get("BENCH_PG", "host=127.0.0.1 port=5432 user=postgres")
REDIS_URL = os.environ.get("BENCH_CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")

DEFAULT_N = 12_000  # jobs per end-to-end run (the whole peer run stays under 5 minutes on 2 cores)
DEFAULT_N_SINGLE = 5_000  # jobs for the single-enqueue rate
DEFAULT_WORKERS = (1, 2, 4)
DEFAULT_PICKUP_SAMPLES = 100
PICKUP_WARMUP = 5  # samples taken and discarded before the measured ones
BULK_CHUNK = 1_000  # jobs per bulk enqueue call, for every system
PGQUEUER_BATCH = 100
PROCRASTINATE_CONCURRENCY = 4  # async jobs per worker process (procrastinate's default is 1)
CELERY_POOL = "prefork"

READY_TIMEOUT = 60.0  # a worker process must be connected and ready within this
RUN_TIMEOUT = 240.0  # hard cap for one end-to-end run
PICKUP_TIMEOUT = 5.0  # one pickup sample
STOP_GRACE = 10.0  # after this a process that was asked to stop is killed
POLL_INTERVAL = 0.01  # completion polling

PEERS = ("pgqueuer", "procrastinate", "celery")
FIGURE_KEYS = (
    "single_enqueue_per_s",
    "bulk_enqueue_per_s",
    "e2e_per_s",
    "pickup_p50_ms",
    "pickup_p99_ms",
)

_SPAWN = mp.get_context("spawn")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# shared helpers


def dsn(dbname: str) -> str:
    return f"{PG_SERVER} dbname={dbname}"


def pg_url(db_dsn: str) -> str:
    """The libpq key=value DSN as a URL (asyncpg takes URLs only)."""
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(db_dsn)
    auth = d.get("user", "postgres") + (f":{d['password']}" if d.get("password") else "")
    return f"postgresql://{auth}@{d.get('host', '127.0.0.1')}:{d.get('port', 5432)}/{d['dbname']}"


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when it is installed (as pgqueuer's own CLI does)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def create_database(name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(name: str) -> None:
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    except Exception as exc:  # cleanup must not hide the original error
        log(f"could not drop database {name}: {exc!r}")


@contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """A freshly created database, dropped on the way out whatever happens."""
    create_database(name)
    try:
        yield dsn(name)
    finally:
        drop_database(name)


def server_settings() -> dict[str, str]:
    import psycopg

    with psycopg.connect(dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
        out = {}
        for name in ("synchronous_commit", "fsync", "shared_buffers", "server_version"):
            out[name] = conn.execute(f"SHOW {name}").fetchone()[0]
        return out


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile, p in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def pickup_figures(latencies_s: list[float]) -> dict[str, Any]:
    ms = [x * 1000.0 for x in latencies_s]
    return {
        "pickup_p50_ms": percentile(ms, 50),
        "pickup_p99_ms": percentile(ms, 99),
        "pickup_samples": len(ms),
        "pickup_max_ms": max(ms) if ms else float("nan"),
    }


class Flag:
    """A one-way cross-process flag: shared memory, polled.

    Unlike multiprocessing.Event it never blocks the setter: Event.set() waits for every
    process that was waiting on it, and hangs for good when one of them exited mid-wait.
    """

    def __init__(self) -> None:
        self._value = _SPAWN.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)

    def wait(self, timeout: float, interval: float = 0.0005) -> bool:
        deadline = time.monotonic() + timeout
        while not self._value.value:
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True


def stop_processes(procs: Sequence[Any], stop_flag: Flag | None = None) -> None:
    """Ask nicely (stop flag, then SIGTERM), then SIGKILL; bounded in time."""
    if stop_flag is not None:
        stop_flag.set()
    deadline = time.monotonic() + STOP_GRACE / 2
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE / 2
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            log(f"killing worker process {p.pid}")
            p.kill()
            p.join(5)


def start_workers(
    target: Callable[..., None], count: int, args: tuple, ready_timeout: float = READY_TIMEOUT
) -> tuple[list[Any], Flag, Flag]:
    """Start `count` spawn processes running target(*args, ready, go, stop, index).

    Returns (processes, go, stop) once every process has set its ready flag. The caller
    must hand the processes to `stop_processes` (the function does so itself on failure).
    """
    go, stop = Flag(), Flag()
    readies = [Flag() for _ in range(count)]
    procs = [
        _SPAWN.Process(
            target=target, args=(*args, readies[i], go, stop, i), daemon=True, name=f"bench-w{i}"
        )
        for i in range(count)
    ]
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + ready_timeout
        for p, ready in zip(procs, readies):
            while not ready.wait(0.1, interval=0.01):
                if not p.is_alive():
                    raise RuntimeError(f"worker process exited with {p.exitcode} before ready")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"worker process not ready within {ready_timeout}s")
    except BaseException:
        stop_processes(procs, stop)
        raise
    return procs, go, stop


def wait_for_completion(
    remaining: Callable[[], int], procs: Sequence[Any], timeout: float
) -> float:
    """Poll `remaining()` until it is 0; returns the perf_counter() at which it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        if remaining() == 0:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs still pending after {timeout}s")
        if procs and not any(p.is_alive() for p in procs):
            if remaining() == 0:
                return time.perf_counter()
            raise RuntimeError(
                f"all workers exited with work left (exit codes {[p.exitcode for p in procs]})"
            )
        time.sleep(POLL_INTERVAL)


def _watch_stop(stop: Flag, callback: Callable[[], None]) -> None:
    """Call `callback` (from a daemon thread) once `stop` is set."""

    def run() -> None:
        while not stop.wait(3600, interval=0.1):
            pass
        callback()

    threading.Thread(target=run, daemon=True).start()


def _worker_setup() -> None:
    # The parent ends workers through the stop event or SIGTERM; SIGINT (ctrl-c in the
    # terminal, sent to the whole process group) is the parent's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------------------
# pgqueuer


PGQ_DB = "bench_pgqueuer"
PGQ_ENTRYPOINT = "bench_noop"


def _pgq_worker(
    db_dsn: str, batch_size: int, drain: bool, samples: Any, ready: Any, go: Any, stop: Any, index: int
) -> None:
    _worker_setup()
    run_async(_pgq_worker_async(db_dsn, batch_size, drain, samples, ready, go, stop))


async def _pgq_worker_async(
    db_dsn: str, batch_size: int, drain: bool, samples: Any, ready: Any, go: Any, stop: Any
) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.models import Job
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(pg_url(db_dsn))
    try:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        if samples is None:

            @qm.entrypoint(PGQ_ENTRYPOINT, accepts_context=False)
            async def noop(job: Job) -> None:
                pass

        else:

            @qm.entrypoint(PGQ_ENTRYPOINT, accepts_context=False)
            async def noop(job: Job) -> None:
                started = time.time()
                samples.put((int(json.loads(job.payload)["i"]), started))

        loop = asyncio.get_running_loop()
        _watch_stop(stop, lambda: loop.call_soon_threadsafe(qm.shutdown.set))
        ready.set()
        if not await asyncio.to_thread(go.wait, RUN_TIMEOUT):
            return
        await qm.run(
            batch_size=batch_size,
            mode=QueueExecutionMode.drain if drain else QueueExecutionMode.continuous,
        )
    finally:
        await conn.close()


async def _pgq_connect(db_dsn: str):
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    conn = await asyncpg.connect(pg_url(db_dsn))
    return conn, Queries(AsyncpgDriver(conn))


async def _pgq_install(db_dsn: str) -> None:
    conn, queries = await _pgq_connect(db_dsn)
    try:
        await queries.install()
    finally:
        await conn.close()


async def _pgq_single(db_dsn: str, count: int) -> float:
    conn, queries = await _pgq_connect(db_dsn)
    try:
        t0 = time.perf_counter()
        for _ in range(count):
            await queries.enqueue(PGQ_ENTRYPOINT, None)
        elapsed = time.perf_counter() - t0
        await queries.clear_queue()
        return count / elapsed
    finally:
        await conn.close()


async def _pgq_bulk(db_dsn: str, count: int) -> float:
    conn, queries = await _pgq_connect(db_dsn)
    try:
        t0 = time.perf_counter()
        left = count
        while left:
            k = min(BULK_CHUNK, left)
            await queries.enqueue([PGQ_ENTRYPOINT] * k, [None] * k, [0] * k)
            left -= k
        return count / (time.perf_counter() - t0)
    finally:
        await conn.close()


def _pg_exec(db_dsn: str, *statements: str) -> list[Any]:
    import psycopg

    out = []
    with psycopg.connect(db_dsn, autocommit=True, connect_timeout=10) as conn:
        for stmt in statements:
            cur = conn.execute(stmt)
            out.append(cur.fetchall() if cur.description else None)
    return out


def _wal_position(db_dsn: str) -> int:
    """The server's WAL insert position in bytes. Every commit waits for the WAL it wrote to
    reach the disk (synchronous_commit on), so WAL bytes per job is part of its cost."""
    return int(_pg_exec(db_dsn, "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")[0][0][0])


def _pg_poller(db_dsn: str, query: str):
    """A (remaining(), close(), backend pid) triple over one autocommit connection."""
    import psycopg

    conn = psycopg.connect(db_dsn, autocommit=True, connect_timeout=10)
    conn.execute("SET statement_timeout = '5s'")

    def remaining() -> int:
        return int(conn.execute(query).fetchone()[0])

    return remaining, conn.close, conn.info.backend_pid


def _cpu_ns(pid: int) -> int:
    """Nanoseconds one process has run on a CPU so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


_TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def _postgres_cpu_ns() -> float:
    """CPU used so far by the PostgreSQL server on this machine, in nanoseconds.

    The running processes' own time (postmaster, backends, helpers), plus the time of the
    backends that have exited, which the kernel adds to their parent when it reaps them:
    a worker's backend that disconnects before the run is seen to end is still counted.
    """
    total = 0.0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            if head.split("(", 1)[1] != "postgres":
                continue
            fields = rest.split()
            own = _cpu_ns(int(name)) if fields[0] != "Z" else 0
            # An exited backend not yet reaped keeps only its utime and stime.
            own = own or (int(fields[11]) + int(fields[12])) * _TICK_NS
            total += own + (int(fields[13]) + int(fields[14])) * _TICK_NS  # + cutime, cstime
        except (OSError, ValueError, IndexError):
            continue
    return total


def _consume_run(
    target: Callable[..., None],
    args: tuple,
    workers: int,
    n: int,
    db_dsn: str,
    remaining_query: str,
    timeout: float,
    cpu: dict[int, dict[str, float]] | None = None,
) -> float:
    """Release `workers` ready processes on a queue of n jobs; return jobs/s.

    With ``cpu``, also records ``cpu[workers]``: CPU microseconds per job spent by the
    worker processes (until the run is seen to end) and by the PostgreSQL server, without
    the backend of the observer that polls ``remaining_query`` (reported as "observer"),
    and the WAL the server wrote per job (the whole server's: nothing else runs).
    Wall-clock rates swing with whatever else shares the machine; CPU per job does much
    less, so it shows which side a change made cheaper.
    """
    remaining, close, observer = _pg_poller(db_dsn, remaining_query)
    procs: list[Any] = []
    stop = None
    try:
        procs, go, stop = start_workers(target, workers, args)
        wal0 = _wal_position(db_dsn)
        w0, d0, o0 = sum(_cpu_ns(p.pid) for p in procs), _postgres_cpu_ns(), _cpu_ns(observer)
        t0 = time.perf_counter()
        go.set()
        t1 = wait_for_completion(remaining, procs, timeout)
        w1, d1, o1 = sum(_cpu_ns(p.pid) for p in procs), _postgres_cpu_ns(), _cpu_ns(observer)
        if cpu is not None:
            cpu[workers] = {"workers": (w1 - w0) / 1e3 / n,
                            "database": (d1 - d0 - (o1 - o0)) / 1e3 / n,
                            "observer": (o1 - o0) / 1e3 / n,
                            "wal_bytes": (_wal_position(db_dsn) - wal0) / n}
        return n / (t1 - t0)
    finally:
        stop_processes(procs, stop)
        close()


def _pickup_run(
    target: Callable[..., None],
    args_before_samples: tuple,
    args_after_samples: tuple,
    enqueue_one: Callable[[int], None],
    samples_count: int,
) -> list[float]:
    """One idle worker; enqueue one job at a time; latency = handler start - commit."""
    samples = _SPAWN.Queue()
    procs: list[Any] = []
    stop = None
    latencies: list[float] = []
    try:
        procs, go, stop = start_workers(
            target, 1, (*args_before_samples, samples, *args_after_samples)
        )
        go.set()
        time.sleep(1.0)  # let the worker reach its idle wait
        for i in range(PICKUP_WARMUP + samples_count):
            enqueue_one(i)
            committed = time.time()
            got_i, started = samples.get(timeout=PICKUP_TIMEOUT)
            if got_i != i:
                raise RuntimeError(f"pickup sample out of order: got {got_i}, expected {i}")
            if i >= PICKUP_WARMUP:
                latencies.append(started - committed)
            time.sleep(0.05)  # idle again before the next one
        return latencies
    finally:
        stop_processes(procs, stop)
        samples.close()
        samples.cancel_join_thread()


def bench_pgqueuer(
    n: int = DEFAULT_N,
    workers: Sequence[int] = DEFAULT_WORKERS,
    n_single: int = DEFAULT_N_SINGLE,
    pickup_samples: int = DEFAULT_PICKUP_SAMPLES,
    timeout: float = RUN_TIMEOUT,
) -> dict[str, Any]:
    """pgqueuer on database bench_pgqueuer: enqueue rates, e2e with batch size 100, pickup."""
    import pgqueuer

    out: dict[str, Any] = {
        "version": pgqueuer.__version__,
        "config": {
            "batch_size": PGQUEUER_BATCH,
            "driver": "asyncpg (pgqueuer's primary driver), uvloop",
            "durability": "default (all tables logged)",
            "bulk_chunk": BULK_CHUNK,
            "n": n,
            "n_single": n_single,
        },
    }
    with scratch_database(PGQ_DB) as db_dsn:
        run_async(_pgq_install(db_dsn))
        log(f"pgqueuer {pgqueuer.__version__}: single enqueue x{n_single}")
        out["single_enqueue_per_s"] = run_async(_pgq_single(db_dsn, n_single))
        bulk_rates, e2e = [], {}
        for w in workers:
            _pg_exec(db_dsn, "VACUUM ANALYZE pgqueuer")
            bulk_rates.append(run_async(_pgq_bulk(db_dsn, n)))
            _pg_exec(db_dsn, "ANALYZE pgqueuer")  # plans for a full queue, not an empty one
            log(f"pgqueuer: e2e {n} jobs, {w} worker(s)")
            e2e[w] = _consume_run(
                _pgq_worker,
                (db_dsn, PGQUEUER_BATCH, True, None),
                w,
                n,
                db_dsn,
                "SELECT count(*) FROM (SELECT 1 FROM pgqueuer LIMIT 1) t",
                timeout,
                out.setdefault("e2e_cpu_us_per_job", {}),
            )
            done = _pg_exec(
                db_dsn, "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
            )[0][0][0]
            _pg_exec(db_dsn, "TRUNCATE pgqueuer_log")
            if done != n:
                raise RuntimeError(f"pgqueuer logged {done} successful jobs, expected {n}")
        out["bulk_enqueue_per_s"] = statistics.median(bulk_rates)
        out["bulk_enqueue_runs"] = bulk_rates
        out["e2e_per_s"] = e2e
        if pickup_samples:
            log(f"pgqueuer: pickup latency x{pickup_samples}")
            _pg_exec(db_dsn, "TRUNCATE pgqueuer_log", "VACUUM ANALYZE pgqueuer")
            import psycopg
            from pgqueuer.db import SyncPsycopgDriver
            from pgqueuer.queries import SyncQueries

            with psycopg.connect(db_dsn, autocommit=True) as conn:
                sq = SyncQueries(SyncPsycopgDriver(conn))

                def enqueue_one(i: int) -> None:
                    sq.enqueue(
                        PGQ_ENTRYPOINT, json.dumps({"i": i, "ts": time.time()}).encode()
                    )

                lat = _pickup_run(
                    _pgq_worker, (db_dsn, PGQUEUER_BATCH, False), (), enqueue_one, pickup_samples
                )
            out.update(pickup_figures(lat))
    return out


# --------------------------------------------------------------------------------------
# procrastinate


PROC_DB = "bench_procrastinate"
PROC_TASK = "bench_noop"
_proc_samples: Any = None  # set in a worker process that measures pickup latency


async def _proc_noop(**kwargs: Any) -> None:
    if _proc_samples is not None:
        started = time.time()
        _proc_samples.put((int(kwargs["i"]), started))


def _proc_app(db_dsn: str):
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=db_dsn))
    task = app.task(name=PROC_TASK)(_proc_noop)
    return app, task


def _proc_worker(
    db_dsn: str, wait: bool, concurrency: int, samples: Any, ready: Any, go: Any, stop: Any, index: int
) -> None:
    global _proc_samples
    _worker_setup()
    _proc_samples = samples
    asyncio.run(_proc_worker_async(db_dsn, wait, concurrency, ready, go, stop, index))


async def _proc_worker_async(
    db_dsn: str, wait: bool, concurrency: int, ready: Any, go: Any, stop: Any, index: int
) -> None:
    app, _ = _proc_app(db_dsn)
    async with app.open_async():
        ready.set()
        if not await asyncio.to_thread(go.wait, RUN_TIMEOUT):
            return
        task = asyncio.create_task(
            app.run_worker_async(
                wait=wait,
                concurrency=concurrency,
                install_signal_handlers=False,
                name=f"bench-{index}",
            )
        )
        loop = asyncio.get_running_loop()
        _watch_stop(stop, lambda: loop.call_soon_threadsafe(task.cancel))
        try:
            await task
        except asyncio.CancelledError:
            pass


async def _proc_single(db_dsn: str, count: int) -> float:
    app, task = _proc_app(db_dsn)
    async with app.open_async():
        t0 = time.perf_counter()
        for _ in range(count):
            await task.defer_async()
        return count / (time.perf_counter() - t0)


async def _proc_bulk(db_dsn: str, count: int) -> float:
    app, task = _proc_app(db_dsn)
    async with app.open_async():
        t0 = time.perf_counter()
        left = count
        while left:
            k = min(BULK_CHUNK, left)
            await task.batch_defer_async(*([{}] * k))
            left -= k
        return count / (time.perf_counter() - t0)


async def _proc_schema(db_dsn: str) -> None:
    app, _ = _proc_app(db_dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


PROC_CLEAR = (
    "DELETE FROM procrastinate_events",
    "DELETE FROM procrastinate_jobs",
    "VACUUM ANALYZE procrastinate_jobs",
)


def bench_procrastinate(
    n: int = DEFAULT_N,
    workers: Sequence[int] = DEFAULT_WORKERS,
    n_single: int = DEFAULT_N_SINGLE,
    pickup_samples: int = DEFAULT_PICKUP_SAMPLES,
    timeout: float = RUN_TIMEOUT,
    concurrency: int = PROCRASTINATE_CONCURRENCY,
) -> dict[str, Any]:
    """procrastinate on database bench_procrastinate: enqueue rates, e2e, pickup."""
    import procrastinate

    out: dict[str, Any] = {
        "version": procrastinate.__version__,
        "config": {
            "concurrency_per_worker": concurrency,
            "connector": "PsycopgConnector",
            "listen_notify": True,
            "delete_jobs": "never (default)",
            "bulk_chunk": BULK_CHUNK,
            "n": n,
            "n_single": n_single,
        },
    }
    with scratch_database(PROC_DB) as db_dsn:
        asyncio.run(_proc_schema(db_dsn))
        log(f"procrastinate {procrastinate.__version__}: single enqueue x{n_single}")
        out["single_enqueue_per_s"] = asyncio.run(_proc_single(db_dsn, n_single))
        bulk_rates, e2e = [], {}
        for w in workers:
            _pg_exec(db_dsn, *PROC_CLEAR)
            bulk_rates.append(asyncio.run(_proc_bulk(db_dsn, n)))
            _pg_exec(db_dsn, "ANALYZE procrastinate_jobs")  # plans for a full queue
            log(f"procrastinate: e2e {n} jobs, {w} worker(s)")
            e2e[w] = _consume_run(
                _proc_worker,
                (db_dsn, False, concurrency, None),
                w,
                n,
                db_dsn,
                "SELECT count(*) FROM (SELECT 1 FROM procrastinate_jobs"
                " WHERE status IN ('todo', 'doing') LIMIT 1) t",
                timeout,
                out.setdefault("e2e_cpu_us_per_job", {}),
            )
            done = _pg_exec(
                db_dsn, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
            )[0][0][0]
            if done != n:
                raise RuntimeError(f"procrastinate: {done} jobs succeeded, expected {n}")
        out["bulk_enqueue_per_s"] = statistics.median(bulk_rates)
        out["bulk_enqueue_runs"] = bulk_rates
        out["e2e_per_s"] = e2e
        if pickup_samples:
            log(f"procrastinate: pickup latency x{pickup_samples}")
            _pg_exec(db_dsn, *PROC_CLEAR)
            lat = asyncio.run(_proc_pickup(db_dsn, pickup_samples, concurrency))
            out.update(pickup_figures(lat))
    return out


async def _proc_pickup(db_dsn: str, samples_count: int, concurrency: int) -> list[float]:
    # The enqueuing app runs on this process's loop; _pickup_run blocks, so run it in a
    # thread and hand each enqueue back to the loop.
    app, task = _proc_app(db_dsn)
    async with app.open_async():
        loop = asyncio.get_running_loop()

        def enqueue_one(i: int) -> None:
            asyncio.run_coroutine_threadsafe(
                task.defer_async(i=i, ts=time.time()), loop
            ).result(PICKUP_TIMEOUT)

        return await asyncio.to_thread(
            _pickup_run, _proc_worker, (db_dsn, True, concurrency), (), enqueue_one, samples_count
        )


# --------------------------------------------------------------------------------------
# Celery 5 + Redis


def _redis():
    import redis

    return redis.Redis.from_url(REDIS_URL, socket_timeout=10)


@contextmanager
def celery_worker(concurrency: int) -> Iterator[str]:
    """A `celery worker` subprocess (prefork, -c concurrency) consuming the warm-up queue.

    Yields the worker's node name once it has run a task. The worker, and its pool
    children (its own process group), are terminated and then killed on the way out.
    """
    import celery_bench as cb

    node = f"bench{concurrency}-{os.getpid()}@localhost"
    cmd = [
        sys.executable, "-m", "celery", "-A", "celery_bench", "worker",
        "--pool", CELERY_POOL, "--concurrency", str(concurrency),
        "--queues", cb.WARMUP_QUEUE, "--hostname", node, "--loglevel", "WARNING",
    ]  # fmt: skip
    # Raw Celery, not the project: without this, Celery's Django fix-up would load the
    # project's settings that our own run set up in this process.
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env.update({"PYTHONPATH": BENCH_DIR, "BENCH_CELERY_BROKER_URL": REDIS_URL})
    logfile = tempfile.NamedTemporaryFile(
        mode="w+b", prefix="bench-celery-", suffix=".log", delete=False
    )
    proc = subprocess.Popen(
        cmd, cwd=BENCH_DIR, env=env, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
    )  # fmt: skip
    ok = False
    try:
        r = _redis()
        r.delete(cb.PING_KEY)
        cb.ping.delay()
        deadline = time.monotonic() + READY_TIMEOUT
        while int(r.get(cb.PING_KEY) or 0) < 1:
            if proc.poll() is not None:
                raise RuntimeError(f"celery worker exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"celery worker not ready within {READY_TIMEOUT}s")
            time.sleep(0.05)
        yield node
        ok = True
    finally:
        _stop_group(proc)
        logfile.close()
        if not ok:
            with open(logfile.name, "rb") as f:
                tail = f.read()[-3000:].decode(errors="replace")
            log(f"celery worker output (tail of {logfile.name}):\n{tail}")
        else:
            os.unlink(logfile.name)


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            pass
    try:  # the pool children too, whatever the master did
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        log(f"celery worker {proc.pid} did not exit after SIGKILL")


def _celery_purge(app: Any, queue: str) -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


def bench_celery(
    n: int = DEFAULT_N,
    workers: Sequence[int] = DEFAULT_WORKERS,
    n_single: int = DEFAULT_N_SINGLE,
    pickup_samples: int = DEFAULT_PICKUP_SAMPLES,
    timeout: float = RUN_TIMEOUT,
) -> dict[str, Any]:
    """Celery 5 + Redis: e2e with `workers` prefork pool processes (-c workers)."""
    if BENCH_DIR not in sys.path:
        sys.path.insert(0, BENCH_DIR)
    import celery
    import celery_bench as cb

    pickup_at = 2 if 2 in workers else workers[0]
    out: dict[str, Any] = {
        "version": celery.__version__,
        "config": {
            "broker": REDIS_URL,
            "pool": CELERY_POOL,
            "workers_means": "prefork pool processes of one worker (-c W)",
            "task_ignore_result": True,
            "result_backend": None,
            "completion_count": "Redis INCR in the task",
            "bulk": "apply_async loop on one reused producer (Celery has no bulk publish)",
            "pickup_measured_with_concurrency": pickup_at,
            "n": n,
            "n_single": n_single,
        },
    }
    r = _redis()
    r.flushdb()
    try:
        log(f"celery {celery.__version__}: single enqueue (.delay) x{n_single}")
        t0 = time.perf_counter()
        for _ in range(n_single):
            cb.noop.delay()
        out["single_enqueue_per_s"] = n_single / (time.perf_counter() - t0)
        _celery_purge(cb.app, cb.BENCH_QUEUE)
        bulk_rates, e2e = [], {}
        for w in workers:
            with celery_worker(w) as node:
                _celery_purge(cb.app, cb.BENCH_QUEUE)
                r.delete(cb.DONE_KEY)
                t0 = time.perf_counter()
                with cb.app.producer_or_acquire() as producer:
                    for _ in range(n):
                        cb.noop.apply_async(producer=producer)
                bulk_rates.append(n / (time.perf_counter() - t0))
                log(f"celery: e2e {n} jobs, -c {w}")
                t0 = time.perf_counter()
                replies = cb.app.control.add_consumer(
                    cb.BENCH_QUEUE, destination=[node], reply=True, timeout=10
                )
                if not replies:
                    raise RuntimeError("celery worker did not answer add_consumer")

                def remaining() -> int:
                    return max(0, n - int(r.get(cb.DONE_KEY) or 0))

                t1 = wait_for_completion(remaining, (), timeout)
                e2e[w] = n / (t1 - t0)
                if w == pickup_at and pickup_samples:
                    log(f"celery: pickup latency x{pickup_samples}")
                    out.update(pickup_figures(_celery_pickup(r, cb, pickup_samples)))
        out["bulk_enqueue_per_s"] = statistics.median(bulk_rates)
        out["bulk_enqueue_runs"] = bulk_rates
        out["e2e_per_s"] = e2e
    finally:
        try:
            r.flushdb()
        except Exception as exc:
            log(f"could not flush redis: {exc!r}")
    return out


def _celery_pickup(r: Any, cb: Any, samples_count: int) -> list[float]:
    r.delete(cb.PICKUP_KEY)
    time.sleep(1.0)
    latencies = []
    for i in range(PICKUP_WARMUP + samples_count):
        cb.pickup.delay(i, time.time())
        committed = time.time()
        got = r.blpop([cb.PICKUP_KEY], timeout=PICKUP_TIMEOUT)
        if got is None:
            raise TimeoutError(f"celery pickup sample {i} not seen within {PICKUP_TIMEOUT}s")
        got_i, started = got[1].decode().split()
        if int(got_i) != i:
            raise RuntimeError(f"pickup sample out of order: got {got_i}, expected {i}")
        if i >= PICKUP_WARMUP:
            latencies.append(float(started) - committed)
        time.sleep(0.05)
    return latencies


# --------------------------------------------------------------------------------------
# entry points

BENCH_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "pgqueuer": bench_pgqueuer,
    "procrastinate": bench_procrastinate,
    "celery": bench_celery,
}


def run_peers(
    peers: Sequence[str],
    n: int = DEFAULT_N,
    workers: Sequence[int] = DEFAULT_WORKERS,
    n_single: int = DEFAULT_N_SINGLE,
    pickup_samples: int = DEFAULT_PICKUP_SAMPLES,
    timeout: float = RUN_TIMEOUT,
    procrastinate_concurrency: int = PROCRASTINATE_CONCURRENCY,
) -> dict[str, dict[str, Any]]:
    """Run the named peers one after the other; a peer that fails gets {"error": ...}."""
    results: dict[str, dict[str, Any]] = {}
    for name in peers:
        started = time.monotonic()
        extra = {"concurrency": procrastinate_concurrency} if name == "procrastinate" else {}
        try:
            results[name] = BENCH_FUNCTIONS[name](
                n=n, workers=workers, n_single=n_single, pickup_samples=pickup_samples,
                timeout=timeout, **extra,
            )  # fmt: skip
        except Exception as exc:
            log(f"{name} failed: {exc!r}")
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[name]["seconds"] = round(time.monotonic() - started, 1)
    return results


def install_sigterm_handler() -> None:
    """Turn SIGTERM into SystemExit so that every `finally` (kill workers, drop DBs) runs."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def parse_peers(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {unknown}; choose from {PEERS}")
    return names


def parse_workers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the peer side of the benchmark.")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="jobs per end-to-end run")
    parser.add_argument("--n-single", type=int, default=None, help="jobs for the single-enqueue rate")
    parser.add_argument("--peers", type=parse_peers, default=list(PEERS))
    parser.add_argument("--workers", type=parse_workers, default=list(DEFAULT_WORKERS))
    parser.add_argument("--pickup-samples", type=int, default=DEFAULT_PICKUP_SAMPLES)
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT, help="cap for one run (s)")
    parser.add_argument(
        "--procrastinate-concurrency", type=int, default=PROCRASTINATE_CONCURRENCY
    )
    args = parser.parse_args(argv)
    install_sigterm_handler()
    faulthandler.register(signal.SIGUSR1)
    n_single = args.n_single if args.n_single is not None else min(args.n, DEFAULT_N_SINGLE)
    results = run_peers(
        args.peers, args.n, args.workers, n_single, args.pickup_samples, args.timeout,
        args.procrastinate_concurrency,
    )  # fmt: skip
    print(json.dumps(results, indent=2, default=str))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    # Run through the importable module, so spawned workers resolve `peers.<function>`.
    sys.path.insert(0, BENCH_DIR)
    import peers

    sys.exit(peers.main())
