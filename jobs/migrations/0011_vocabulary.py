"""portico_job_status's condition lists the statuses there are: "cancelled" was never one.

A cancelled job is FAILED with the error "Job cancelled"; the condition now comes from the
one status vocabulary (portico.ports.job), every status but jobs.queue.BUSY_STATUSES. The
index is rebuilt once here (a scan of the table's resting rows that blocks writes meanwhile).
"""
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs", "0010_float_durations_in_update_trigger")]

    operations = [
        migrations.RemoveIndex(model_name="jobrecord", name="portico_job_status"),
        migrations.AddIndex(
            model_name="jobrecord",
            index=models.Index(
                fields=["status", "seq"], name="portico_job_status",
                condition=models.Q(status__in=["scheduled", "failed", "retrying", "dead_letter"]),
            ),
        ),
    ]
