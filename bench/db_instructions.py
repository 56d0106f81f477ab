"""The database's work per job, counted in instructions: claim + acknowledge under callgrind.

Wall-clock rates and even CPU times swing by 20-30% between identical runs on a shared
machine; instruction counts do not (two identical runs differ by < 0.5%). This starts a
scratch PostgreSQL server (the machine's own binaries, a new data directory, port 5433)
with every backend under ``valgrind --tool=callgrind``, migrates the project's schema into
it, and for the current schema and each variant asked for (one schema change on a copy of
the database) replays our hot statements from one connection: claim 100 jobs
(``jobs.queue.CLAIM_ONE``, prepared, binary results), acknowledge them
(``jobs.queue.ACKNOWLEDGE``), until ``--jobs`` jobs are done. It prints the instructions of
that connection's backend per job; then the same for single enqueues (the product's
prepared INSERT, one commit each, ``--jobs / 2`` of them). The server and its directory
are removed at the end.

    .venv/bin/python bench/db_instructions.py [--jobs 3000] [--variant NAME ...]

Needs valgrind and PostgreSQL's server binaries (Debian: /usr/lib/postgresql/<v>/bin).
Takes about 30 s per variant.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 5433
SERVER = f"host=127.0.0.1 port={PORT} user=postgres"
VARIANTS = {
    "no-status-index": ["DROP INDEX portico_job_status"],
    "no-queue-status-index": ["DROP INDEX portico_job_queue_status"],
    "no-type-index": ["DROP INDEX portico_job_type"],
    "type-index-without-running": [
        "DROP INDEX portico_job_type",
        "CREATE INDEX portico_job_type ON portico_job (job_type, seq) WHERE status <> 'running'"],
    "queue-status-index-without-running": [
        "DROP INDEX portico_job_queue_status",
        "CREATE INDEX portico_job_queue_status ON portico_job (queue_name, status, seq) "
        "WHERE status <> 'running'"],
    "id-not-unique": [
        "ALTER TABLE portico_job DROP CONSTRAINT portico_job_id_key",
        "CREATE INDEX portico_job_id ON portico_job (id)"],
    "generic-plans": [
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET plan_cache_mode = force_generic_plan', "
        "current_database()); END $$"],
    "both-indexes-without-running": [
        "DROP INDEX portico_job_type",
        "CREATE INDEX portico_job_type ON portico_job (job_type, seq) WHERE status <> 'running'",
        "DROP INDEX portico_job_queue_status",
        "CREATE INDEX portico_job_queue_status ON portico_job (queue_name, status, seq) "
        "WHERE status <> 'running'"],
    "no-counter-trigger": ["ALTER TABLE portico_job DISABLE TRIGGER portico_job_count_update"],
    "no-failure-trigger": ["ALTER TABLE portico_job DISABLE TRIGGER portico_job_failure_update"],
}


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        sys.exit(f"PostgreSQL's {name} is missing (Debian: apt-get install -y postgresql)")
    return found[-1]


def _as_postgres(args: list[str], **kwargs) -> subprocess.Popen:
    """Run a server binary as the postgres user when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.Popen(args, **kwargs)


def start_server(workdir: str) -> subprocess.Popen:
    data, out = os.path.join(workdir, "data"), os.path.join(workdir, "out")
    os.makedirs(out)
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        shutil.chown(out, "postgres")
    if _as_postgres([_bin("initdb"), "-D", data, "-A", "trust", "-U", "postgres"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait() != 0:
        sys.exit("initdb failed")
    server = _as_postgres(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p", "--dump-instr=no",
         _bin("postgres"), "-D", data, "-p", str(PORT), "-k", workdir,
         "-c", "autovacuum=off", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import psycopg

    for _ in range(120):
        try:
            psycopg.connect(SERVER + " dbname=postgres", connect_timeout=2).close()
            return server
        except psycopg.OperationalError:
            time.sleep(1)
    server.kill()
    sys.exit("the callgrind server did not start within 120 s")


def instructions(workdir: str, pid: int) -> int:
    path = os.path.join(workdir, "out", f"cg.{pid}")
    for _ in range(150):  # written when the backend exits
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    if line.startswith("summary:"):
                        return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError(f"no callgrind output at {path}")


@contextmanager
def schema_copy(name: str) -> Iterator[str]:
    """A database copied from the migrated one, dropped afterwards; yields its conninfo."""
    import psycopg

    db = "cg_" + name.replace("-", "_")
    with psycopg.connect(SERVER + " dbname=postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {db} TEMPLATE portico")
    try:
        yield f"{SERVER} dbname={db}"
    finally:
        with psycopg.connect(SERVER + " dbname=postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


# The replays' backlog: `jobs` pending jobs on queue "bench".
FILL = ("INSERT INTO portico_job (id, queue_name, job_type, payload, priority, max_retries, "
        "retry_count, status, created_at, metadata, run_at, attempt) "
        "SELECT gen_random_uuid(), 'bench', 'bench.noop', jsonb_build_object('i', g), 0, 3, 0, "
        "'pending', now(), '{}', now(), 0 FROM generate_series(1, %s) g")


def drain(dsn: str, name: str, jobs: int, claim: str | None = None, acknowledge: str | None = None) -> int:
    """Claim 100 jobs and acknowledge them, on one connection, until none is left.

    ``claim`` and ``acknowledge`` default to the product's statements; they take the same
    parameters. Checks that all ``jobs`` were acknowledged; returns the backend's pid.
    """
    import psycopg

    from jobs.queue import ACKNOWLEDGE, CLAIM_ONE

    worker = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
    pid, done = worker.info.backend_pid, 0
    while True:
        rows = worker.execute(claim or CLAIM_ONE, ["bench", 100, 300], prepare=True, binary=True).fetchall()
        if not rows:
            break
        acked = worker.execute(acknowledge or ACKNOWLEDGE,
                               [[r[1] for r in rows], [r[9] for r in rows], ["{}"] * len(rows)],
                               prepare=True, binary=True).fetchall()
        if len(acked) != len(rows):
            raise RuntimeError(f"{name}: acknowledged {len(acked)} of {len(rows)}")
        done += len(rows)
    worker.close()
    if done != jobs:
        raise RuntimeError(f"{name}: {done} jobs done, expected {jobs}")
    return pid


def replay(workdir: str, name: str, ddl: list[str], jobs: int) -> float:
    import psycopg

    with schema_copy(name) as dsn:
        with psycopg.connect(dsn, autocommit=True) as setup:
            for statement in ddl:
                setup.execute(statement)
            setup.execute(FILL, [jobs])
            setup.execute("VACUUM ANALYZE portico_job")
        pid = drain(dsn, name, jobs)
        return instructions(workdir, pid) / jobs


def replay_single(workdir: str, jobs: int) -> float:
    """Instructions per single enqueue: the product's prepared INSERT, one commit each."""
    import re
    import uuid

    import psycopg
    from psycopg.types.json import Jsonb

    from jobs.queue import INSERT_ONE

    # INSERT_ONE is written for libpq's numbered parameters; $8 appears twice.
    sql = re.sub(r"\$\d+", "%s", INSERT_ONE)
    with schema_copy("single") as dsn:
        conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
        pid = conn.info.backend_pid
        for i in range(jobs):
            conn.execute(sql, [uuid.uuid4(), "single", "bench.noop", Jsonb({"i": i}), 0, 3, 0, None,
                               "pending", None, Jsonb({}), None], prepare=True)
        conn.close()
        return instructions(workdir, pid) / jobs


def migrate_template() -> None:
    """Create database ``portico`` on the scratch server with the project's migrations applied
    (the template every replay copies)."""
    import psycopg

    with psycopg.connect(SERVER + " dbname=postgres", autocommit=True) as admin:
        admin.execute("CREATE DATABASE portico")
    sys.path.insert(0, REPO_ROOT)
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:{PORT}/portico"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portico_site.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "portico-benchmark-only-not-secret")
    import django
    from django.core.management import call_command
    from django.db import connection

    django.setup()
    call_command("migrate", verbosity=0)
    connection.close()


@contextmanager
def callgrind_server() -> Iterator[str]:
    """The scratch server under callgrind with the migrated template; yields its work directory."""
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is missing (Debian: apt-get install -y valgrind)")
    workdir = tempfile.mkdtemp(prefix="portico-callgrind-")
    server = start_server(workdir)
    try:
        migrate_template()
        yield workdir
    finally:
        os.killpg(server.pid, 15)
        server.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)


def current_schema(workdir: str, jobs: int) -> float:
    """Replay on the migrated schema as it is, print and return its instructions per job."""
    base = replay(workdir, "current", [], jobs)
    print(f"{'current schema':32s} {base:10,.0f} instructions/job (claim + acknowledge)", flush=True)
    return base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS))
    args = parser.parse_args()
    with callgrind_server() as workdir:
        base = current_schema(workdir, args.jobs)
        single = replay_single(workdir, args.jobs // 2)
        print(f"{'current schema':32s} {single:10,.0f} instructions/single enqueue", flush=True)
        for name in args.variant:
            value = replay(workdir, name, VARIANTS[name], args.jobs)
            print(f"{name:32s} {value:10,.0f} instructions/job ({(value - base) / base:+.1%})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
