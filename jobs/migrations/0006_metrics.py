"""What /metrics needs beyond the counts: run-time and wait histograms, and live workers.

The histograms are counted by the same triggers as the queue counters, in the same
transaction as the state change, into the same delta rows of ``portico_queue_counter``
(names ``duration:<bucket>``, ``duration:sum_us``, ``wait:<bucket>``, ``wait:sum_us``), so
they are exact whichever process ran the job, survive pruning and restarts, and a scrape
reads counts and histograms in one statement, from one snapshot.

- duration: each run that ended (running -> completed, failed, retrying, dead letter), from
  its claim to its end by the database clock;
- wait: each claim (waiting -> running), from the moment the job was due (``run_at``) to
  the claim.

``<bucket>`` is the index of the first upper bound the value does not exceed, in BUCKETS
below (len(BUCKETS) is +Inf). BUCKETS must equal ``jobs.metrics.BUCKETS``; a test checks
it, and a change of bounds needs a new migration.
"""
from django.db import migrations, models
from django.db.models.functions import Now

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

# PostgreSQL: the index of the first bound >= x is len(BUCKETS) - (bounds >= x), and
# width_bucket over the negated bounds counts the bounds >= x.
_NEGATED = "ARRAY[" + ", ".join(repr(-b) for b in reversed(BUCKETS)) + "]::float8[]"


def _bucket_pg(value: str) -> str:
    return f"({len(BUCKETS)} - width_bucket(-({value}), {_NEGATED}))"


ENDED = "('completed', 'failed', 'retrying', 'dead_letter')"
WAITING = "('pending', 'scheduled', 'retrying')"

POSTGRES_UPDATE = f"""
CREATE OR REPLACE FUNCTION portico_count_update() RETURNS trigger LANGUAGE plpgsql
SET jit = off AS $$
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT n.queue_name, o.status AS old_status, n.status AS new_status,
               o.retry_count AS old_retries, n.retry_count AS new_retries,
               CASE WHEN o.status = 'running' AND n.status IN {ENDED} THEN
                    GREATEST(0, EXTRACT(EPOCH FROM COALESCE(n.completed_at, n.failed_at, now())
                                                   - o.started_at))::float8 END AS ran,
               CASE WHEN o.status IN {WAITING} AND n.status = 'running' THEN
                    GREATEST(0, EXTRACT(EPOCH FROM n.started_at - o.run_at))::float8 END AS waited
          FROM old_rows o JOIN new_rows n USING (seq)
         WHERE o.status <> n.status OR o.retry_count <> n.retry_count
    ), deltas AS (
        SELECT queue_name, old_status AS name, -1::bigint AS delta FROM changed WHERE old_status <> new_status
        UNION ALL
        SELECT queue_name, new_status, 1 FROM changed WHERE old_status <> new_status
        UNION ALL
        SELECT queue_name,
               CASE new_status WHEN 'completed' THEN 'completed_total'
                               WHEN 'failed' THEN 'failed_total'
                               ELSE 'dead_lettered_total' END, 1
          FROM changed
         WHERE old_status <> new_status AND new_status IN ('completed', 'failed', 'dead_letter')
        UNION ALL
        SELECT queue_name, 'retried_total', 1 FROM changed WHERE new_retries > old_retries
        UNION ALL
        SELECT queue_name, 'duration:' || {_bucket_pg('ran')}, 1 FROM changed WHERE ran IS NOT NULL
        UNION ALL
        SELECT queue_name, 'duration:sum_us', round(ran * 1e6)::bigint FROM changed WHERE ran IS NOT NULL
        UNION ALL
        SELECT queue_name, 'wait:' || {_bucket_pg('waited')}, 1 FROM changed WHERE waited IS NOT NULL
        UNION ALL
        SELECT queue_name, 'wait:sum_us', round(waited * 1e6)::bigint FROM changed WHERE waited IS NOT NULL
    )
    INSERT INTO portico_queue_counter (queue_name, name, value)
    SELECT queue_name, name, SUM(delta) FROM deltas GROUP BY queue_name, name
    HAVING SUM(delta) <> 0;
    PERFORM pg_notify('portico_jobs', q.queue_name)
       FROM (SELECT DISTINCT n.queue_name FROM old_rows o JOIN new_rows n USING (seq)
              WHERE (o.status <> n.status OR o.retry_count <> n.retry_count)
                AND n.status IN {WAITING} AND n.run_at <= now()) AS q;
    RETURN NULL;
END $$;
"""

# The function as migration 0002 wrote it (0005 turned JIT off separately).
POSTGRES_UPDATE_REVERSE = """
CREATE OR REPLACE FUNCTION portico_count_update() RETURNS trigger LANGUAGE plpgsql
SET jit = off AS $$
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT n.queue_name, o.status AS old_status, n.status AS new_status,
               o.retry_count AS old_retries, n.retry_count AS new_retries
          FROM old_rows o JOIN new_rows n USING (seq)
         WHERE o.status <> n.status OR o.retry_count <> n.retry_count
    ), deltas AS (
        SELECT queue_name, old_status AS name, -1 AS delta FROM changed WHERE old_status <> new_status
        UNION ALL
        SELECT queue_name, new_status, 1 FROM changed WHERE old_status <> new_status
        UNION ALL
        SELECT queue_name,
               CASE new_status WHEN 'completed' THEN 'completed_total'
                               WHEN 'failed' THEN 'failed_total'
                               ELSE 'dead_lettered_total' END, 1
          FROM changed
         WHERE old_status <> new_status AND new_status IN ('completed', 'failed', 'dead_letter')
        UNION ALL
        SELECT queue_name, 'retried_total', 1 FROM changed WHERE new_retries > old_retries
    )
    INSERT INTO portico_queue_counter (queue_name, name, value)
    SELECT queue_name, name, SUM(delta) FROM deltas GROUP BY queue_name, name
    HAVING SUM(delta) <> 0;
    PERFORM pg_notify('portico_jobs', q.queue_name)
       FROM (SELECT DISTINCT n.queue_name FROM old_rows o JOIN new_rows n USING (seq)
              WHERE (o.status <> n.status OR o.retry_count <> n.retry_count)
                AND n.status IN ('pending', 'scheduled', 'retrying') AND n.run_at <= now()) AS q;
    RETURN NULL;
END $$;
"""


def _bucket_sqlite(value: str) -> str:
    whens = " ".join(f"WHEN {value} <= {bound!r} THEN {i}" for i, bound in enumerate(BUCKETS))
    return f"CASE {whens} ELSE {len(BUCKETS)} END"


def _observe_sqlite(metric: str, condition: str, seconds: str) -> str:
    return f"""
        INSERT INTO portico_queue_counter (queue_name, name, value)
        SELECT NEW.queue_name, '{metric}:' || ({_bucket_sqlite('s')}), 1
          FROM (SELECT max(0.0, {seconds}) AS s) WHERE {condition}
        UNION ALL
        SELECT NEW.queue_name, '{metric}:sum_us', CAST(round(s * 1000000.0) AS INTEGER)
          FROM (SELECT max(0.0, {seconds}) AS s) WHERE {condition};"""


SQLITE_HISTOGRAMS = f"""
    CREATE TRIGGER portico_job_histograms AFTER UPDATE OF status ON portico_job
    WHEN OLD.status <> NEW.status BEGIN
        {_observe_sqlite(
            "duration", f"OLD.status = 'running' AND NEW.status IN {ENDED}",
            "(julianday(COALESCE(NEW.completed_at, NEW.failed_at, 'now')) - julianday(OLD.started_at)) * 86400.0",
        )}
        {_observe_sqlite(
            "wait", f"OLD.status IN {WAITING} AND NEW.status = 'running'",
            "(julianday(NEW.started_at) - julianday(OLD.run_at)) * 86400.0",
        )}
    END
"""


def _histogram_triggers(forward: bool):
    def run(apps, schema_editor):
        vendor = schema_editor.connection.vendor
        if vendor == "postgresql":
            schema_editor.execute(POSTGRES_UPDATE if forward else POSTGRES_UPDATE_REVERSE)
        elif vendor == "sqlite":
            schema_editor.execute(SQLITE_HISTOGRAMS if forward else "DROP TRIGGER IF EXISTS portico_job_histograms")
        else:
            raise RuntimeError(f"Portico's job store supports PostgreSQL and SQLite, not {vendor}")

    return run


class Migration(migrations.Migration):
    dependencies = [("jobs", "0005_counter_triggers_without_jit")]

    operations = [
        migrations.CreateModel(
            name="WorkerRecord",
            fields=[
                ("worker_id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("kind", models.CharField(max_length=16)),
                ("hostname", models.CharField(max_length=255)),
                ("pid", models.IntegerField()),
                ("queues", models.JSONField(default=list)),
                ("started_at", models.DateTimeField(db_default=Now())),
                ("last_seen_at", models.DateTimeField(db_default=Now())),
            ],
            options={"db_table": "portico_worker", "ordering": ["-last_seen_at"], "verbose_name": "worker"},
        ),
        migrations.RunPython(_histogram_triggers(True), _histogram_triggers(False)),
    ]
