"""How fast the dashboard answers with a million jobs, and how long requeue-all of 50,000 dead letters takes.

Run: .venv/bin/python bench/dashboard.py [--jobs 1000000] [--requests 100] [--keep]

It creates (and drops, unless --keep) its own database, portico_bench_dashboard, on the
local PostgreSQL. The jobs are spread over 20 queues: 5% dead letters (a handful of
distinct errors, each with varying ids and numbers in it), 1% failed, 1% retrying, 10%
pending, the rest completed. They are loaded with INSERT ... SELECT with the triggers
off, as a restore would, then the counters and the failure groups are rebuilt with the
code's own repairs and checked for drift before anything is measured.

Pages are fetched with Django's test client as a logged-in operator, DEBUG off: 5
warm-ups, then --requests timed requests each (server time, no network). Then the
dead-letter page's "requeue all matching" is posted while two worker processes claim
and complete the 20 queues' due jobs (the pending ones, and requeued ones as they
arrive); it reports the requeue's duration and the workers' throughput
before and during it. Results go to bench/results/dashboard.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from typing import Any

from scratch_db import ROOT, complete_jobs, drop_database, percentile, recreate_database, setup_django

DB_NAME = "portico_bench_dashboard"
QUEUES = tuple(f"queue-{n}" for n in range(20))
CHUNK = 250_000
WARMUPS = 5
PAGE_TARGET_MS = 50.0
REQUEUE_TARGET_S = 10.0
WORKERS = 2
WORKER_BATCH = 50
BASELINE_SECONDS = 3.0
REQUEUE_DEADLINE_S = 300.0

# One row per generated job. m = (i / 20) % 100 picks the status, independently of the
# queue (i % 20); the error text and job type vary over blocks of rows, so every queue
# gets every kind of failure. Numbers, hex ids and uuids in the messages differ per row
# but fingerprint alike: five error groups per (queue, job type).
INSERT_JOBS = """
INSERT INTO portico_job (id, queue_name, job_type, payload, priority, max_retries, retry_count,
                         status, created_at, started_at, completed_at, failed_at, error_message,
                         metadata, run_at, attempt, result_data)
SELECT gen_random_uuid(), 'queue-' || mod(i, 20), job_type, jsonb_build_object('n', i), 0, 3,
       CASE status WHEN 'dead_letter' THEN 3 WHEN 'retrying' THEN 1 ELSE 0 END,
       status, at - interval '1 minute',
       CASE WHEN status = 'pending' THEN NULL ELSE at - interval '30 seconds' END,
       CASE WHEN status = 'completed' THEN at END,
       CASE WHEN status IN ('dead_letter', 'failed') THEN at END,
       CASE WHEN status IN ('dead_letter', 'failed', 'retrying') THEN error END,
       '{}'::jsonb,
       CASE WHEN status = 'retrying' THEN now() + interval '1 day' ELSE at - interval '1 minute' END,
       CASE status WHEN 'pending' THEN 0 WHEN 'dead_letter' THEN 4 WHEN 'retrying' THEN 2 ELSE 1 END,
       CASE WHEN status = 'completed' THEN '{}'::jsonb END
  FROM (SELECT i,
               CASE WHEN m < 5 THEN 'dead_letter' WHEN m = 5 THEN 'failed'
                    WHEN m = 6 THEN 'retrying' WHEN m < 17 THEN 'pending'
                    ELSE 'completed' END AS status,
               (ARRAY['report.generate', 'email.send', 'invoice.sync'])[mod(i / 10000, 3) + 1] AS job_type,
               now() - make_interval(secs => mod(i, 172800)) AS at,
               CASE mod(i / 2000, 5)
                 WHEN 0 THEN 'ConnectionRefusedError: [Errno 111] Connection refused (10.0.'
                             || mod(i, 255) || '.' || mod(i, 7) || ':5432)'
                 WHEN 1 THEN 'TimeoutError: the payment gateway did not answer within '
                             || (mod(i, 30) + 1) || ' s'
                 WHEN 2 THEN 'KeyError: ''customer_id'''
                 WHEN 3 THEN 'ValueError: invoice ' || md5(i::text) || ' has no lines'
                 ELSE 'RuntimeError: job ' || gen_random_uuid() || ' exceeded its memory limit'
               END AS error
          FROM (SELECT i, mod(i / 20, 100) AS m FROM generate_series(%s, %s) AS i) AS numbered
       ) AS generated
"""


def load_jobs(total: int) -> float:
    """Insert the jobs with the triggers off, then rebuild what the triggers would have kept."""
    from django.db import connection

    from jobs import maintenance
    from jobs.queue import DatabaseJobQueueAdapter

    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        for offset in range(0, total, CHUNK):
            cursor.execute(INSERT_JOBS, [offset, min(offset + CHUNK, total) - 1])
            print(f"  inserted {min(offset + CHUNK, total):,} jobs", flush=True)
        cursor.execute("SET session_replication_role = origin")
        cursor.execute("VACUUM ANALYZE portico_job")
    queue = DatabaseJobQueueAdapter()
    queue.fix_counter_drift_sync()
    queue.compact_counters_sync()
    for status in ("dead_letter", "failed"):
        maintenance.rebuild_failure_groups(status)
    return time.perf_counter() - began


def drift() -> dict[str, Any]:
    """Every difference between the job rows and the counters or failure groups kept beside them."""
    from jobs import maintenance
    from jobs.queue import DatabaseJobQueueAdapter

    counters = DatabaseJobQueueAdapter().counter_drift_sync()
    groups = {status: maintenance.failure_drift(status) for status in ("dead_letter", "failed")}
    return {
        "counters": {f"{queue}/{status}": pair for (queue, status), pair in counters.items()},
        "failure_groups": {status: queues for status, queues in groups.items() if queues},
    }


def status_counts() -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT status, COUNT(*) FROM portico_job GROUP BY status")
        return {status: int(n) for status, n in cursor.fetchall()}


def operator_client():
    from django.contrib.auth.models import Group, User
    from django.test import Client

    user = User.objects.create_user("bench-operator", password=None)
    user.groups.add(Group.objects.get(name="operator"))
    client = Client()
    client.force_login(user)
    return client


def pages() -> list[tuple[str, str, dict[str, str]]]:
    from jobs.models import JobRecord

    job_id = JobRecord.objects.filter(status="dead_letter").values_list("id", flat=True).first()
    return [
        ("overview /", "/", {}),
        ("overview live partial", "/", {"HX-Request": "true"}),
        ("queue page", "/queues/queue-3/", {}),
        ("queue page ?status=dead_letter", "/queues/queue-3/?status=dead_letter", {}),
        ("dead-letter page", "/dead-letter/", {}),
        ("job page", f"/jobs/{job_id}/", {}),
    ]


def measure_pages(client, requests: int) -> dict[str, dict[str, float]]:
    results = {}
    for name, url, headers in pages():
        for _ in range(WARMUPS):
            client.get(url, headers=headers)
        times = []
        for _ in range(requests):
            began = time.perf_counter()
            response = client.get(url, headers=headers)
            times.append((time.perf_counter() - began) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}")
        results[name] = {"url": url, "p50_ms": statistics.median(times),
                         "p95_ms": percentile(times, 0.95), "max_ms": max(times)}
        print(f"  {name:32s} p50 {results[name]['p50_ms']:6.1f} ms  p95 {results[name]['p95_ms']:6.1f} ms",
              flush=True)
    return results


def completed_over(done, seconds: float) -> float:
    before, began = done.value, time.monotonic()
    time.sleep(seconds)
    return (done.value - before) / (time.monotonic() - began)


def requeue_all(client, done) -> dict[str, Any]:
    """Post "requeue all matching" on the dead-letter page and wait for its background run to finish."""
    from jobs.models import AuditEntry

    dead = status_counts().get("dead_letter", 0)
    before_jobs, began = done.value, time.monotonic()
    response = client.post("/dead-letter/bulk/", {"action": "requeue", "status": "dead_letter"})
    if response.status_code != 303:
        raise RuntimeError(f"requeue-all answered {response.status_code}")
    entry = AuditEntry.objects.filter(scope="filter").latest("id")
    while time.monotonic() - began < REQUEUE_DEADLINE_S:
        entry.refresh_from_db()
        if entry.finished_at is not None:
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"requeue-all did not finish within {REQUEUE_DEADLINE_S:.0f} s")
    took = time.monotonic() - began
    if entry.error:
        raise RuntimeError(f"requeue-all stopped: {entry.error}")
    return {"dead_letters": dead, "requested": entry.requested, "changed": entry.changed,
            "refused": entry.refused, "seconds": took,
            "workers_jobs_per_s": (done.value - before_jobs) / took}


def run_with_workers(client) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    done, stop = context.Value("q", 0), context.Event()
    worker_args = (DB_NAME, list(QUEUES), WORKER_BATCH, done, stop, REQUEUE_DEADLINE_S + 120)
    workers = [context.Process(target=complete_jobs, args=worker_args, daemon=True) for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    try:
        started = time.monotonic()
        while done.value == 0 and time.monotonic() - started < 60:
            time.sleep(0.05)
        baseline = completed_over(done, BASELINE_SECONDS)
        result = requeue_all(client, done)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    result["workers_baseline_jobs_per_s"] = baseline
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    recreate_database(DB_NAME)
    setup_django(DB_NAME)
    from django.conf import settings
    from django.core.management import call_command

    if settings.DEBUG:
        raise SystemExit("DEBUG is on: timings would include query logging")
    try:
        call_command("migrate", verbosity=0)
        print(f"loading {args.jobs:,} jobs", flush=True)
        load_seconds = load_jobs(args.jobs)
        counts = status_counts()
        found = drift()
        if found["counters"] or found["failure_groups"]:
            raise SystemExit(f"counters or failure groups drifted before measuring: {found}")
        print(f"loaded in {load_seconds:.0f} s: {counts}; no counter or failure-group drift", flush=True)

        client = operator_client()
        print(f"pages ({WARMUPS} warm-ups, {args.requests} timed requests each)", flush=True)
        page_results = measure_pages(client, args.requests)
        print(f"requeue-all of the dead letters while {WORKERS} worker processes complete jobs", flush=True)
        requeue = run_with_workers(client)
        after = drift()
        requeue["drift_after"] = after
    finally:
        if not args.keep:
            drop_database(DB_NAME)

    print(f"\n{args.jobs:,} jobs, 20 queues, {counts.get('dead_letter', 0):,} dead letters\n")
    print(f"{'page':34s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}  target p95 < {PAGE_TARGET_MS:.0f} ms")
    for name, r in page_results.items():
        verdict = "ok" if r["p95_ms"] < PAGE_TARGET_MS else "MISSED"
        print(f"{name:34s} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['max_ms']:8.1f}  {verdict}")
    verdict = "ok" if requeue["seconds"] < REQUEUE_TARGET_S else "MISSED"
    print(f"\nrequeue-all: {requeue['changed']:,} of {requeue['requested']:,} requeued "
          f"({requeue['refused']} refused) in {requeue['seconds']:.1f} s  "
          f"target < {REQUEUE_TARGET_S:.0f} s: {verdict}")
    print(f"workers ({WORKERS} processes, batches of {WORKER_BATCH}): "
          f"{requeue['workers_baseline_jobs_per_s']:,.0f} jobs/s before, "
          f"{requeue['workers_jobs_per_s']:,.0f} jobs/s during the requeue")
    print("drift after: " + ("none" if not (after["counters"] or after["failure_groups"]) else str(after)))

    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "dashboard.json").write_text(json.dumps({
        "jobs": args.jobs, "requests": args.requests, "warmups": WARMUPS, "status_counts": counts,
        "load_seconds": load_seconds, "pages": page_results, "requeue_all": requeue,
    }, indent=2, default=str))


if __name__ == "__main__":
    main()
