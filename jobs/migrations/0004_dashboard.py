"""The dashboard's tables (audit trail, throughput samples, failure groups), its triggers, and the operator and viewer roles.

On PostgreSQL, row triggers keep ``portico_failure_delta`` in step with the failed and
dead-letter jobs (only rows entering or leaving those statuses fire them, so claims and
acknowledgements pay nothing), and a partial expression index lists one group's jobs
without reading the others'. SQLite has no regular expressions in SQL: there the
dashboard groups failures as it reads them.
"""
import django.db.models.deletion
import django.db.models.functions.datetime
from django.conf import settings
from django.db import migrations, models

# The error fingerprint: uuids, hex ids (0x…, or a word of 8+ hex digits) and numbers
# replaced by placeholders. jobs.queries.fingerprint is its Python twin. Three plain
# patterns: a lookahead ("digits and letters mixed") tripled the cost of every fingerprint.
FINGERPRINT = r"""
CREATE OR REPLACE FUNCTION portico_fingerprint(message text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT regexp_replace(regexp_replace(regexp_replace(left(coalesce(message, ''), 500),
    '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'gi'),
    '\m0x[0-9a-f]+\M|\m[0-9a-f]{8,}\M', '<hex>', 'gi'),
    '[0-9]+', '<n>', 'g')
$$;
"""

TRIGGERS = """
CREATE OR REPLACE FUNCTION portico_track_failure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.status IN ('failed', 'dead_letter') THEN
        INSERT INTO portico_failure_delta (status, queue_name, job_type, fingerprint, delta)
        VALUES (OLD.status, OLD.queue_name, OLD.job_type, portico_fingerprint(OLD.error_message), -1);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.status IN ('failed', 'dead_letter') THEN
        INSERT INTO portico_failure_delta
               (status, queue_name, job_type, fingerprint, delta, first_seen, last_seen)
        VALUES (NEW.status, NEW.queue_name, NEW.job_type, portico_fingerprint(NEW.error_message), 1,
                coalesce(NEW.failed_at, now()), coalesce(NEW.failed_at, now()));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER portico_job_failure_insert AFTER INSERT ON portico_job FOR EACH ROW
    WHEN (NEW.status IN ('failed', 'dead_letter')) EXECUTE FUNCTION portico_track_failure();
CREATE TRIGGER portico_job_failure_update AFTER UPDATE ON portico_job FOR EACH ROW
    WHEN ((OLD.status IN ('failed', 'dead_letter') OR NEW.status IN ('failed', 'dead_letter'))
          AND (OLD.status, OLD.queue_name, OLD.job_type, OLD.error_message)
              IS DISTINCT FROM (NEW.status, NEW.queue_name, NEW.job_type, NEW.error_message))
    EXECUTE FUNCTION portico_track_failure();
CREATE TRIGGER portico_job_failure_delete AFTER DELETE ON portico_job FOR EACH ROW
    WHEN (OLD.status IN ('failed', 'dead_letter')) EXECUTE FUNCTION portico_track_failure();

-- One group's jobs, newest first, without reading the rest of the failures.
CREATE INDEX portico_job_failure_group ON portico_job
    (status, queue_name, job_type, md5(portico_fingerprint(error_message)), seq)
    WHERE status IN ('failed', 'dead_letter');

-- The failures already stored when the triggers arrive.
INSERT INTO portico_failure_delta (status, queue_name, job_type, fingerprint, delta, first_seen, last_seen)
SELECT status, queue_name, job_type, portico_fingerprint(error_message), COUNT(*),
       MIN(coalesce(failed_at, created_at)), MAX(coalesce(failed_at, created_at))
  FROM portico_job WHERE status IN ('failed', 'dead_letter')
 GROUP BY status, queue_name, job_type, portico_fingerprint(error_message);
"""

REVERSE = """
DROP INDEX IF EXISTS portico_job_failure_group;
DROP TRIGGER IF EXISTS portico_job_failure_insert ON portico_job;
DROP TRIGGER IF EXISTS portico_job_failure_update ON portico_job;
DROP TRIGGER IF EXISTS portico_job_failure_delete ON portico_job;
DROP FUNCTION IF EXISTS portico_track_failure();
DROP FUNCTION IF EXISTS portico_fingerprint(text);
"""

# Who may do what: both roles read every page; only operators requeue, cancel and discard.
ROLES = {
    "viewer": ["view_jobrecord", "view_jobattemptrecord", "view_auditentry"],
    "operator": ["view_jobrecord", "view_jobattemptrecord", "view_auditentry", "operate_jobs"],
}


def create_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FINGERPRINT)
        schema_editor.execute(TRIGGERS)


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(REVERSE)


def create_roles(apps, schema_editor):
    """Create (or complete) the operator and viewer groups; safe to run again."""
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after the last migration; the groups need them now.
    # create_permissions skips an app without a models module, which a migration's
    # historical app is: flag one for the call, then put back what was there.
    jobs_config = apps.get_app_config("jobs")
    previous = getattr(jobs_config, "models_module", None)
    jobs_config.models_module = previous or True
    try:
        create_permissions(jobs_config, apps=apps, verbosity=0)
    finally:
        jobs_config.models_module = previous

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*Permission.objects.filter(
            content_type__app_label="jobs", codename__in=codenames))


def drop_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0003_schedule_fire_webhook_key'),
        ('auth', '0012_alter_user_first_name_max_length'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='AuditEntry',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ('actor_name', models.CharField(max_length=150)),
                ('action', models.CharField(choices=[('requeue', 'requeue'), ('cancel', 'cancel'), ('discard', 'discard')], max_length=16)),
                ('source', models.CharField(choices=[('dashboard', 'dashboard'), ('admin', 'admin')], max_length=16)),
                ('scope', models.CharField(choices=[('jobs', 'chosen jobs'), ('filter', 'every job matching a filter')], max_length=16)),
                ('job_ids', models.JSONField(blank=True, default=list)),
                ('filter', models.JSONField(blank=True, default=dict)),
                ('requested', models.IntegerField(default=0)),
                ('changed', models.IntegerField(default=0)),
                ('refused', models.IntegerField(default=0)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('error', models.TextField(blank=True, default='')),
                ('actor', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'verbose_name': 'audit entry',
                'verbose_name_plural': 'audit entries',
                'db_table': 'portico_audit_entry',
                'ordering': ['-id'],
                'permissions': [('operate_jobs', 'Can requeue, cancel and discard jobs')],
            },
        ),
        migrations.CreateModel(
            name='FailureDelta',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('status', models.CharField(max_length=16)),
                ('queue_name', models.CharField(max_length=200)),
                ('job_type', models.CharField(max_length=200)),
                ('fingerprint', models.TextField()),
                ('delta', models.BigIntegerField()),
                ('first_seen', models.DateTimeField(null=True)),
                ('last_seen', models.DateTimeField(null=True)),
            ],
            options={
                'db_table': 'portico_failure_delta',
                'indexes': [models.Index(fields=['status', 'queue_name'], name='portico_failure_status')],
            },
        ),
        migrations.CreateModel(
            name='QueueSample',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('queue_name', models.CharField(max_length=200)),
                ('minute', models.DateTimeField()),
                ('completed_total', models.BigIntegerField()),
                ('failed_total', models.BigIntegerField()),
            ],
            options={
                'db_table': 'portico_queue_sample',
                'constraints': [models.UniqueConstraint(fields=('minute', 'queue_name'), name='portico_queue_sample_once')],
            },
        ),
        migrations.RunPython(create_triggers, drop_triggers),
        migrations.RunPython(create_roles, drop_roles),
    ]
