"""The Portico Jobs benchmark: ours and the peers, in one run, side by side.

    bench/setup_env.sh
    bench/.venv/bin/python bench/run.py [--n N] [--peers pgqueuer,procrastinate,celery]
                                        [--ours | --no-ours]

Runs ours first (`ours.run_ours`), then each peer (`peers.py`), prints one table (rows:
metrics; columns: ours, each peer, and ours/peer ratios) and writes every raw figure to
bench/results/latest.json. Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth)
and Redis on 127.0.0.1:6379 (database 15 is flushed). Exit status: 0 when everything ran,
1 when a system failed (its column says "error", the JSON says why), 2 when ours cannot run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import faulthandler
import json
import math
import os
import platform
import signal
import subprocess
import sys
from typing import Any, Sequence

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import peers  # noqa: E402

RESULTS_PATH = os.path.join(BENCH_DIR, "results", "latest.json")

# (label, how to read it from a result dict, higher is better)
ROWS: list[tuple[str, Any, bool]] = [
    ("single enqueue/s", lambda r: r.get("single_enqueue_per_s"), True),
    ("bulk enqueue/s", lambda r: r.get("bulk_enqueue_per_s"), True),
]


def _e2e_row(w: int) -> tuple[str, Any, bool]:
    label = f"e2e jobs/s, {w} worker{'s' if w != 1 else ''}"
    return (label, lambda r: (r.get("e2e_per_s") or {}).get(w), True)


def _cpu_rows(w: int) -> list[tuple[str, Any, bool]]:
    def side(name: str) -> Any:
        return lambda r: ((r.get("e2e_cpu_us_per_job") or {}).get(w) or {}).get(name)

    return [(f"  CPU us/job, {w}w: workers", side("workers"), False),
            (f"  CPU us/job, {w}w: database", side("database"), False),
            (f"  CPU us/job, {w}w: observer", side("observer"), False),
            (f"  WAL bytes/job, {w}w", side("wal_bytes"), False)]


LATENCY_ROWS: list[tuple[str, Any, bool]] = [
    ("pickup p50 ms", lambda r: r.get("pickup_p50_ms"), False),
    ("pickup p99 ms", lambda r: r.get("pickup_p99_ms"), False),
]


def _fmt(value: Any, higher_is_better: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if higher_is_better:
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def _ratio(ours: Any, peer: Any) -> str:
    if ours is None or peer is None or not peer:
        return "-"
    if any(isinstance(x, float) and math.isnan(x) for x in (ours, peer)):
        return "-"
    return f"{ours / peer:.2f}x"


def render_table(results: dict[str, dict[str, Any]], peer_names: Sequence[str],
                 workers: Sequence[int]) -> str:
    rows = ROWS + [row for w in workers for row in [_e2e_row(w), *_cpu_rows(w)]] + LATENCY_ROWS
    systems = ["ours", *peer_names]
    header = ["metric", *systems, *[f"ours/{p}" for p in peer_names]]
    body = []
    for label, get, higher in rows:
        cells = [label]
        values = {}
        for name in systems:
            res = results.get(name)
            if res is None:
                cells.append("-")
                values[name] = None
            elif "error" in res and not any(k in res for k in peers.FIGURE_KEYS):
                cells.append("error")
                values[name] = None
            else:
                values[name] = get(res)
                cells.append(_fmt(values[name], higher))
        for p in peer_names:
            cells.append(_ratio(values["ours"], values[p]))
        body.append(cells)
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = []
    for j, r in enumerate([header, *body]):
        lines.append(" | ".join(
            str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(r)
        ))  # fmt: skip
        if j == 0:
            lines.append("-+-".join("-" * w for w in widths))
    lines.append("")
    lines.append("ratios are ours/peer: above 1 is better for rates, below 1 is better for latencies and CPU")
    return "\n".join(lines)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", BENCH_DIR, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return out.stdout.strip() or None
    except Exception:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=peers.DEFAULT_N,
                        help=f"jobs per end-to-end run (default {peers.DEFAULT_N})")
    parser.add_argument("--n-single", type=int, default=None,
                        help=f"jobs for the single-enqueue rate (default min(n, {peers.DEFAULT_N_SINGLE}))")
    parser.add_argument("--peers", type=peers.parse_peers, default=list(peers.PEERS),
                        help="comma-separated subset of " + ",".join(peers.PEERS))
    parser.add_argument("--workers", type=peers.parse_workers, default=list(peers.DEFAULT_WORKERS),
                        help="worker-process counts for the end-to-end runs (default 1,2,4)")
    parser.add_argument("--pickup-samples", type=int, default=peers.DEFAULT_PICKUP_SAMPLES)
    parser.add_argument("--timeout", type=float, default=peers.RUN_TIMEOUT,
                        help="hard cap in seconds for one end-to-end run")
    parser.add_argument("--procrastinate-concurrency", type=int,
                        default=peers.PROCRASTINATE_CONCURRENCY)
    parser.add_argument("--ours", action=argparse.BooleanOptionalAction, default=True,
                        help="run our adapter too (default: yes)")
    parser.add_argument("--json", default=RESULTS_PATH, help="where to write the raw figures")
    args = parser.parse_args(argv)  # fmt: skip
    n_single = args.n_single if args.n_single is not None else min(args.n, peers.DEFAULT_N_SINGLE)

    peers.install_sigterm_handler()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` shows where a run is stuck

    results: dict[str, dict[str, Any]] = {}
    if args.ours:
        try:
            import ours
        except ImportError as exc:
            print(f"bench/ours.py cannot be imported: {exc}", file=sys.stderr)
            return 2
        available, why = ours.adapter_available()
        if not available:
            print(ours.UNAVAILABLE, file=sys.stderr)
            print(f"  ({why}); run with --no-ours to measure the peers only", file=sys.stderr)
            return 2
        peers.log("ours: jobs.queue.DatabaseJobQueueAdapter")
        try:
            results["ours"] = ours.run_ours(
                args.n, args.workers, n_single=n_single, pickup_samples=args.pickup_samples,
                timeout=args.timeout,
            )  # fmt: skip
        except (ours.OursUnavailable, NotImplementedError) as exc:
            print(f"cannot run ours: {exc}; run with --no-ours to measure the peers only",
                  file=sys.stderr)  # fmt: skip
            return 2
        except Exception as exc:
            peers.log(f"ours failed: {exc!r}")
            results["ours"] = {"error": f"{type(exc).__name__}: {exc}"}

    results.update(peers.run_peers(
        args.peers, args.n, args.workers, n_single, args.pickup_samples, args.timeout,
        args.procrastinate_concurrency,
    ))  # fmt: skip

    table = render_table(results, args.peers, args.workers)
    try:
        server = peers.server_settings()
    except Exception as exc:
        server = {"error": repr(exc)}
    record = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
        "project_commit": _git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "postgres": server,
        "params": {
            "n": args.n,
            "n_single": n_single,
            "workers": args.workers,
            "pickup_samples": args.pickup_samples,
            "pickup_warmup": peers.PICKUP_WARMUP,
            "bulk_chunk": peers.BULK_CHUNK,
            "pgqueuer_batch": peers.PGQUEUER_BATCH,
            "procrastinate_concurrency": args.procrastinate_concurrency,
            "celery_pool": peers.CELERY_POOL,
        },
        "results": results,
        "table": table,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(record, f, indent=2, default=str)
        f.write("\n")

    print()
    print(f"n={args.n} jobs per end-to-end run, single enqueue over {n_single}, "
          f"pickup over {args.pickup_samples} samples; synchronous_commit="
          f"{server.get('synchronous_commit', '?')}; {os.cpu_count()} CPUs")  # fmt: skip
    print(table)
    print(f"\nraw figures: {os.path.relpath(args.json)}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
