"""How fast GET /metrics answers with a million jobs across 100 queues, idle and under load.

Run: .venv/bin/python bench/metrics.py [--jobs 1000000] [--queues 100] [--requests 200] [--keep]

It creates (and drops, unless --keep) its own database, portico_bench_metrics, on the
local PostgreSQL. The jobs (70% completed, 15% pending, 5% each failed, dead letter and
retrying) are inserted through the real triggers, so the counters are the ones the store
keeps; then every queue gets run-time and wait histograms as claims and acknowledgements
would have left them, and 10 live workers. Scrapes go through Django's test client with
DEBUG off (server time, no network): 5 warm-ups, then --requests timed ones,

- idle: nothing else running;
- under load: two worker processes claim and complete pending jobs in batches of 100 the
  whole time, so the counter table keeps gaining delta rows between compactions.

The peer, timed in the same run: what an exporter without maintained counts does, one
``SELECT queue_name, status, COUNT(*) ... GROUP BY`` over the job table per scrape.
Results go to bench/results/metrics.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from typing import Any

from scratch_db import ROOT, complete_jobs, drop_database, percentile, recreate_database, setup_django

DB_NAME = "portico_bench_metrics"
CHUNK = 250_000
WARMUPS = 5
TARGET_P95_MS = 20.0
WORKER_BATCH = 100

INSERT_JOBS = """
INSERT INTO portico_job (id, queue_name, job_type, payload, priority, max_retries, retry_count,
                         status, created_at, started_at, completed_at, failed_at, error_message,
                         metadata, run_at, attempt)
SELECT gen_random_uuid(), 'queue-' || mod(i, %(queues)s), 'bench.job', jsonb_build_object('n', i), 0, 3,
       CASE WHEN m = 90 THEN 1 ELSE 0 END, status, now() - interval '1 hour',
       CASE WHEN status = 'pending' THEN NULL ELSE now() - interval '59 minutes' END,
       CASE WHEN status = 'completed' THEN now() - interval '58 minutes' END,
       CASE WHEN status IN ('failed', 'dead_letter') THEN now() - interval '58 minutes' END,
       CASE WHEN status IN ('failed', 'dead_letter', 'retrying') THEN 'boom' END,
       '{}'::jsonb,
       CASE WHEN status = 'retrying' THEN now() + interval '1 day' ELSE now() - interval '1 hour' END,
       CASE WHEN status = 'pending' THEN 0 ELSE 1 END
  FROM (SELECT i, mod(i / %(queues)s, 100) AS m,
               CASE WHEN mod(i / %(queues)s, 100) < 70 THEN 'completed'
                    WHEN mod(i / %(queues)s, 100) < 85 THEN 'pending'
                    WHEN mod(i / %(queues)s, 100) < 90 THEN 'failed'
                    WHEN mod(i / %(queues)s, 100) < 95 THEN 'dead_letter'
                    ELSE 'retrying' END AS status
          FROM generate_series(%(first)s, %(last)s) AS i) AS g
"""


def load(total: int, queues: int) -> float:
    """The jobs through the triggers, a histogram history per queue, and 10 live workers."""
    from django.db import connection

    from jobs.metrics import BUCKETS
    from jobs.queue import DatabaseJobQueueAdapter

    began = time.perf_counter()
    with connection.cursor() as cursor:
        for first in range(0, total, CHUNK):
            cursor.execute(INSERT_JOBS, {"queues": queues, "first": first, "last": min(first + CHUNK, total) - 1})
            print(f"  inserted {min(first + CHUNK, total):,} jobs", flush=True)
        # What the claims and acknowledgements of the finished jobs would have counted.
        cursor.execute(
            "INSERT INTO portico_queue_counter (queue_name, name, value) "
            "SELECT 'queue-' || q, metric || ':' || b, 1000 + q * 7 + b "
            "FROM generate_series(0, %s) q, generate_series(0, %s) b, unnest(ARRAY['duration', 'wait']) metric",
            [queues - 1, len(BUCKETS)])
        cursor.execute(
            "INSERT INTO portico_queue_counter (queue_name, name, value) "
            "SELECT 'queue-' || q, metric || ':sum_us', 123456789 "
            "FROM generate_series(0, %s) q, unnest(ARRAY['duration', 'wait']) metric", [queues - 1])
        cursor.execute("VACUUM ANALYZE portico_job")
    adapter = DatabaseJobQueueAdapter()
    for n in range(10):
        adapter.worker_seen_sync(f"bench:{n}", "builtin", [f"queue-{q}" for q in range(n, queues, 10)], "bench", n)
    adapter.compact_counters_sync()
    return time.perf_counter() - began


def summary(times: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(times, 0.50), "p95_ms": percentile(times, 0.95),
            "p99_ms": percentile(times, 0.99), "mean_ms": statistics.fmean(times), "max_ms": max(times)}


def time_scrapes(requests: int) -> tuple[dict[str, float], int, int]:
    from django.test import Client

    client = Client()
    size = lines = 0
    for _ in range(WARMUPS):
        client.get("/metrics")
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        response = client.get("/metrics")
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.status_code
        size = len(response.content)
        lines = sum(1 for line in response.content.splitlines() if line and not line.startswith(b"#"))
    return summary(times), size, lines


def time_peer(requests: int) -> dict[str, float]:
    from django.db import connection

    times = []
    with connection.cursor() as cursor:
        for _ in range(requests):
            began = time.perf_counter()
            cursor.execute("SELECT queue_name, status, COUNT(*) FROM portico_job GROUP BY queue_name, status")
            cursor.fetchall()
            times.append((time.perf_counter() - began) * 1000)
    return summary(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--queues", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    recreate_database(DB_NAME)
    setup_django(DB_NAME)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    print(f"loading {args.jobs:,} jobs over {args.queues} queues", flush=True)
    load_seconds = load(args.jobs, args.queues)
    results: dict[str, Any] = {"jobs": args.jobs, "queues": args.queues, "load_seconds": load_seconds}
    try:
        idle, size, lines = time_scrapes(args.requests)
        results.update(idle=idle, body_bytes=size, series=lines)
        print(f"idle:       p50 {idle['p50_ms']:.2f} ms  p95 {idle['p95_ms']:.2f} ms  "
              f"({lines:,} series, {size:,} bytes)", flush=True)
        peer = time_peer(max(5, args.requests // 20))
        results["peer_count_group_by"] = peer
        print(f"peer COUNT(*) GROUP BY: p50 {peer['p50_ms']:.1f} ms  p95 {peer['p95_ms']:.1f} ms", flush=True)

        context = multiprocessing.get_context("spawn")
        done, stop = context.Value("q", 0), context.Event()
        names = [f"queue-{q}" for q in range(args.queues)]
        workers = [context.Process(target=complete_jobs, args=(DB_NAME, names, WORKER_BATCH, done, stop))
                   for _ in range(2)]
        for process in workers:
            process.start()
        time.sleep(2.0)
        before, began = done.value, time.monotonic()
        loaded, _, _ = time_scrapes(args.requests)
        rate = (done.value - before) / (time.monotonic() - began)
        stop.set()
        for process in workers:
            process.join()
        results.update(under_load=loaded, load_jobs_per_second=rate)
        print(f"under load: p50 {loaded['p50_ms']:.2f} ms  p95 {loaded['p95_ms']:.2f} ms  "
              f"(2 workers completing {rate:,.0f} jobs/s)", flush=True)
        ratio = peer["p95_ms"] / idle["p95_ms"]
        results["peer_over_ours_p95"] = ratio
        # The target is the issue's: a scrape of a million jobs over 100 queues. Under load
        # the two workers keep both of this machine's cores busy; that figure is reported,
        # not judged.
        met = idle["p95_ms"] < TARGET_P95_MS
        results["target_p95_ms"] = TARGET_P95_MS
        results["target_met"] = met
        print(f"ratio: the COUNT(*) peer's p95 is {ratio:.0f}x ours; "
              f"target p95 < {TARGET_P95_MS:.0f} ms at {args.jobs:,} jobs: {'met' if met else 'MISSED'} "
              f"(idle p95 {idle['p95_ms']:.2f} ms; under load {loaded['p95_ms']:.2f} ms)", flush=True)
    finally:
        out = ROOT / "bench" / "results" / "metrics.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        if not args.keep:
            drop_database(DB_NAME)


if __name__ == "__main__":
    main()
