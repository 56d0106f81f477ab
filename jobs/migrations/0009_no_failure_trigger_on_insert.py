"""Enqueues stop paying for a failure-group trigger that never fires for them.

``portico_job_failure_insert`` kept the dead-letter page's groups for rows inserted as
failed or dead letters. A new job is pending or scheduled (``portico.validation.check_job``
refuses anything else), so it never fired, yet PostgreSQL read its ``WHEN`` clause back
from its stored text on every insert statement and evaluated it for every row: ~34,000
of ~517,000 instructions of each single enqueue (``bench/db_instructions.py``: 517,619 ->
483,624). A failed row written behind the product's back shows up as drift between the
groups and the counts, which the dead-letter page rebuilds
(``jobs.rollups.heal_failure_groups``). The update and delete triggers stay: requeues,
failures and discards change groups.
"""
from django.db import migrations

CREATE = """
CREATE TRIGGER portico_job_failure_insert AFTER INSERT ON portico_job FOR EACH ROW
    WHEN (NEW.status IN ('failed', 'dead_letter')) EXECUTE FUNCTION portico_track_failure();
"""


def _drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP TRIGGER portico_job_failure_insert ON portico_job")


def _create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


class Migration(migrations.Migration):
    dependencies = [("jobs", "0008_listing_indexes_without_running")]

    operations = [migrations.RunPython(_drop, _create)]
