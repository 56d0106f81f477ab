"""Database triggers that keep portico_queue_counter exact, in the same transaction as each change.

On PostgreSQL the triggers run once per statement over its transition tables, so a claim
of 100 jobs appends a few counter rows, not hundreds; they also NOTIFY waiting workers
when jobs become due. SQLite has no statement triggers with transition tables, so it
counts row by row (cheap in-process) and its workers poll.
"""
from django.db import migrations

POSTGRES = """
CREATE OR REPLACE FUNCTION portico_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO portico_queue_counter (queue_name, name, value)
    SELECT queue_name, status, COUNT(*) FROM new_rows GROUP BY queue_name, status
    UNION ALL
    SELECT queue_name, 'enqueued_total', COUNT(*) FROM new_rows GROUP BY queue_name;
    PERFORM pg_notify('portico_jobs', q.queue_name)
       FROM (SELECT DISTINCT queue_name FROM new_rows WHERE run_at <= now()) AS q;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION portico_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE OR REPLACE FUNCTION portico_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO portico_queue_counter (queue_name, name, value)
    SELECT queue_name, status, -COUNT(*) FROM old_rows GROUP BY queue_name, status;
    RETURN NULL;
END $$;

CREATE TRIGGER portico_job_count_insert AFTER INSERT ON portico_job
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION portico_count_insert();
CREATE TRIGGER portico_job_count_update AFTER UPDATE ON portico_job
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION portico_count_update();
CREATE TRIGGER portico_job_count_delete AFTER DELETE ON portico_job
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION portico_count_delete();
"""

POSTGRES_REVERSE = """
DROP TRIGGER IF EXISTS portico_job_count_insert ON portico_job;
DROP TRIGGER IF EXISTS portico_job_count_update ON portico_job;
DROP TRIGGER IF EXISTS portico_job_count_delete ON portico_job;
DROP FUNCTION IF EXISTS portico_count_insert();
DROP FUNCTION IF EXISTS portico_count_update();
DROP FUNCTION IF EXISTS portico_count_delete();
"""

SQLITE = [
    """
    CREATE TRIGGER portico_job_count_insert AFTER INSERT ON portico_job BEGIN
        INSERT INTO portico_queue_counter (queue_name, name, value)
        VALUES (NEW.queue_name, NEW.status, 1), (NEW.queue_name, 'enqueued_total', 1);
    END
    """,
    """
    CREATE TRIGGER portico_job_count_status AFTER UPDATE OF status ON portico_job
    WHEN OLD.status <> NEW.status BEGIN
        INSERT INTO portico_queue_counter (queue_name, name, value)
        VALUES (OLD.queue_name, OLD.status, -1), (NEW.queue_name, NEW.status, 1);
        INSERT INTO portico_queue_counter (queue_name, name, value)
        SELECT NEW.queue_name,
               CASE NEW.status WHEN 'completed' THEN 'completed_total'
                               WHEN 'failed' THEN 'failed_total'
                               ELSE 'dead_lettered_total' END, 1
         WHERE NEW.status IN ('completed', 'failed', 'dead_letter');
    END
    """,
    """
    CREATE TRIGGER portico_job_count_retry AFTER UPDATE OF retry_count ON portico_job
    WHEN NEW.retry_count > OLD.retry_count BEGIN
        INSERT INTO portico_queue_counter (queue_name, name, value)
        VALUES (NEW.queue_name, 'retried_total', 1);
    END
    """,
    """
    CREATE TRIGGER portico_job_count_delete AFTER DELETE ON portico_job BEGIN
        INSERT INTO portico_queue_counter (queue_name, name, value)
        VALUES (OLD.queue_name, OLD.status, -1);
    END
    """,
]

SQLITE_REVERSE = [
    "DROP TRIGGER IF EXISTS portico_job_count_insert",
    "DROP TRIGGER IF EXISTS portico_job_count_status",
    "DROP TRIGGER IF EXISTS portico_job_count_retry",
    "DROP TRIGGER IF EXISTS portico_job_count_delete",
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        vendor = schema_editor.connection.vendor
        if vendor not in statements_by_vendor:
            raise RuntimeError(f"Portico's job store supports PostgreSQL and SQLite, not {vendor}")
        statements = statements_by_vendor[vendor]
        for statement in [statements] if isinstance(statements, str) else statements:
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_job_store")]

    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRES, "sqlite": SQLITE}),
            _run({"postgresql": POSTGRES_REVERSE, "sqlite": SQLITE_REVERSE}),
        ),
    ]
