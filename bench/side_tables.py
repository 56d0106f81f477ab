"""Would side tables make claims and acknowledgements cheaper? The experiment, re-runnable.

The idea: take ``status`` out of every index of ``portico_job`` so that claiming and
acknowledging become HOT updates (no index entries written), keep waiting jobs in a narrow
``portico_ready`` table claimed with ``DELETE ... RETURNING`` and running jobs with their
leases in ``portico_running``. This builds that schema by hand on a copy of the migrated
one, replays claims (100 jobs) and acknowledgements like ``bench/db_instructions.py`` does
for the real statements, and prints the instructions per job of both, under callgrind on
the same scratch server. The counter trigger stays as it is in both.

    .venv/bin/python bench/side_tables.py [--jobs 3000]

Two side-table designs: "ready + running" (the whole idea, fillfactor 70) and "ready only"
(no structure for running jobs, so expired leases could not be found: a lower bound, not a
usable design; fillfactor 50).
"""
from __future__ import annotations

import argparse

import db_instructions as cg

SCHEMA = """
DROP INDEX portico_job_claim, portico_job_due, portico_job_queue_status, portico_job_type,
    portico_job_status, portico_job_lease, portico_job_completed, portico_job_failure_group;
CREATE INDEX portico_job_queue ON portico_job (queue_name, seq);
CREATE INDEX portico_job_type ON portico_job (job_type, seq);
ALTER TABLE portico_job SET (fillfactor = {fillfactor});
CREATE TABLE portico_ready (seq bigint NOT NULL, queue_name text NOT NULL, priority int NOT NULL,
    run_at timestamptz NOT NULL);
CREATE INDEX portico_ready_claim ON portico_ready (queue_name, priority DESC, seq) INCLUDE (run_at);
CREATE TABLE portico_running (seq bigint PRIMARY KEY, queue_name text NOT NULL,
    lease_expires_at timestamptz NOT NULL);
CREATE INDEX portico_running_lease ON portico_running (lease_expires_at);
"""
# The claim's UPDATE returns the product's claim columns (jobs.queue.J_COLUMNS) and the lease.
CLAIM = (
    "WITH next AS (SELECT seq FROM portico_ready WHERE queue_name = %s AND run_at <= now() "
    "ORDER BY priority DESC, seq LIMIT %s FOR UPDATE SKIP LOCKED), "
    "d AS (DELETE FROM portico_ready r USING next WHERE r.seq = next.seq RETURNING r.seq), "
    "u AS (UPDATE portico_job j SET status = 'running', started_at = now(), attempt = j.attempt + 1, "
    "lease_expires_at = now() + %s * interval '1 second' FROM d WHERE j.seq = d.seq "
    "RETURNING {columns}, j.lease_expires_at){running} SELECT * FROM u"
)
CLAIM_RUNNING = (", r AS (INSERT INTO portico_running (seq, queue_name, lease_expires_at) "
                 "SELECT seq, queue_name, lease_expires_at FROM u)")
ACK = (
    "WITH a AS (UPDATE portico_job j SET status = 'completed', completed_at = now(), "
    "result_data = v.result, lease_expires_at = NULL "
    "FROM unnest(%b::uuid[], %b::timestamptz[], %b::jsonb[]) AS v(id, started_at, result) "
    "WHERE j.id = v.id AND j.status = 'running' "
    "AND (v.started_at IS NULL OR j.started_at = v.started_at) RETURNING j.seq, j.id, j.completed_at)"
    "{running} SELECT id, completed_at FROM a"
)
ACK_RUNNING = ", r AS (DELETE FROM portico_running x USING a WHERE x.seq = a.seq)"
DESIGNS = {"ready + running": (70, True), "ready only": (50, False)}


def replay_side_tables(workdir: str, name: str, fillfactor: int, running: bool, jobs: int) -> tuple[float, str]:
    """Instructions per claimed and acknowledged job on the side-table schema; and its HOT share."""
    import psycopg

    from jobs.queue import J_COLUMNS

    claim = CLAIM.format(columns=J_COLUMNS, running=CLAIM_RUNNING if running else "")
    ack = ACK.format(running=ACK_RUNNING if running else "")
    with cg.schema_copy(name) as dsn:
        with psycopg.connect(dsn, autocommit=True) as setup:
            setup.execute(SCHEMA.format(fillfactor=fillfactor))
            setup.execute(cg.FILL, [jobs])
            setup.execute("INSERT INTO portico_ready SELECT seq, queue_name, priority, run_at FROM portico_job")
            setup.execute("VACUUM ANALYZE portico_job, portico_ready")
        pid = cg.drain(dsn, name, jobs, claim, ack)
        per_job = cg.instructions(workdir, pid) / jobs  # waits for the backend's exit, and its statistics
        with psycopg.connect(dsn, autocommit=True) as check:
            updates, hot = check.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                         "WHERE relname = 'portico_job'").fetchone()
        return per_job, f"{hot:,} of {updates:,} updates HOT"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    args = parser.parse_args()
    with cg.callgrind_server() as workdir:
        base = cg.current_schema(workdir, args.jobs)
        for name, (fillfactor, running) in DESIGNS.items():
            value, hot = replay_side_tables(workdir, name.replace(" + ", "_").replace(" ", "_"),
                                            fillfactor, running, args.jobs)
            print(f"{name:32s} {value:10,.0f} instructions/job ({(value - base) / base:+.1%}; {hot})",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
