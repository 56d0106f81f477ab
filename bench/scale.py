"""How the hot paths cost as history grows: dequeue and get_queue_stats with 0 to 10 million finished jobs.

Run: .venv/bin/python bench/scale.py [--sizes 0,10000,1000000,10000000] [--samples 300]

It creates (and drops) its own database, portico_bench_scale, on the local PostgreSQL.
History rows are completed jobs spread over 20 queues, loaded with INSERT ... SELECT and
counted once by the same recount portico_reconcile uses. At each size it measures, on a
queue with a small live backlog: enqueue + claim + acknowledge of one job (the dequeue
path), get_queue_stats of one queue, and get_all_queue_stats; it prints medians and p95
and the ratio to the empty-table cost.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from uuid import uuid4

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "portico_bench_scale"
SERVER = "postgres://postgres@127.0.0.1:5432"


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["DATABASE_URL"] = f"{SERVER}/{DB_NAME}"
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ.setdefault("DJANGO_SECRET_KEY", "benchmark-only-secret-key-benchmark-only-secret")
    os.environ["DJANGO_SETTINGS_MODULE"] = "portico_site.settings"
    import django

    django.setup()


def recreate_database() -> None:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def add_history(rows: int, start: int) -> float:
    """Append completed jobs (triggers off, as a restore would), then recount the counters."""
    from django.db import connection

    from jobs.queue import DatabaseJobQueueAdapter

    began = time.perf_counter()
    chunk = 1_000_000
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        for offset in range(start, start + rows, chunk):
            stop = min(offset + chunk, start + rows)
            cursor.execute(
                "INSERT INTO portico_job (id, queue_name, job_type, payload, priority, max_retries, "
                "retry_count, status, created_at, started_at, completed_at, metadata, run_at, attempt, "
                "result_data) SELECT gen_random_uuid(), 'history-' || (i %% 20), 'report.generate', "
                "jsonb_build_object('n', i), 0, 3, 0, 'completed', now() - interval '2 days', "
                "now() - interval '2 days', now() - interval '1 day', '{}'::jsonb, "
                "now() - interval '2 days', 1, '{}'::jsonb FROM generate_series(%s, %s) AS i",
                [offset, stop - 1],
            )
        cursor.execute("SET session_replication_role = origin")
        cursor.execute("VACUUM ANALYZE portico_job")
    queue = DatabaseJobQueueAdapter()
    queue.fix_counter_drift_sync()
    queue.compact_counters_sync()
    return time.perf_counter() - began


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(samples: int) -> dict[str, dict[str, float]]:
    from jobs.queue import DatabaseJobQueueAdapter
    from portico.ports.job import Job

    queue = DatabaseJobQueueAdapter()
    # A live backlog beside the history, as a real queue has.
    queue.enqueue_many_sync([
        Job(id=uuid4(), queue_name="live", job_type="noop", payload={"i": i}) for i in range(200)
    ])
    timings: dict[str, list[float]] = {"dequeue": [], "stats": [], "all_stats": []}
    for _ in range(samples):
        queue.enqueue_sync(Job(id=uuid4(), queue_name="live", job_type="noop", payload={}))
        began = time.perf_counter()
        claimed = queue.dequeue_many_sync("live", 1)
        queue.acknowledge_sync(claimed[0].id, claim=claimed[0])
        timings["dequeue"].append(time.perf_counter() - began)
        began = time.perf_counter()
        queue.get_queue_stats_sync("live")
        timings["stats"].append(time.perf_counter() - began)
        began = time.perf_counter()
        queue.get_all_queue_stats_sync()
        timings["all_stats"].append(time.perf_counter() - began)
    return {
        name: {"p50_ms": statistics.median(v) * 1000, "p95_ms": percentile(v, 0.95) * 1000}
        for name, v in timings.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,10000,1000000,10000000")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    recreate_database()
    setup_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    results = {}
    loaded = 0
    for size in sizes:
        if size > loaded:
            took = add_history(size - loaded, loaded)
            print(f"loaded {size - loaded:,} history rows in {took:.0f}s", flush=True)
            loaded = size
        results[size] = measure(args.samples)
        print(f"{size:>12,} rows: " + "  ".join(
            f"{name} p50 {r['p50_ms']:.2f} ms p95 {r['p95_ms']:.2f} ms" for name, r in results[size].items()
        ), flush=True)

    base = results[sizes[0]]
    print("\nhistory rows | dequeue p50 (x empty) | get_queue_stats p50 | all queues p50")
    for size in sizes:
        r = results[size]
        print(f"{size:>12,} | {r['dequeue']['p50_ms']:.2f} ms ({r['dequeue']['p50_ms'] / base['dequeue']['p50_ms']:.2f}x)"
              f" | {r['stats']['p50_ms']:.2f} ms | {r['all_stats']['p50_ms']:.2f} ms")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "scale.json").write_text(json.dumps(results, indent=2))
    if not args.keep:
        from django.db import connection

        connection.close()
        import psycopg

        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


if __name__ == "__main__":
    main()
