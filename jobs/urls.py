"""URLs of the jobs app, mounted at the site root: the dashboard, its actions, and the webhook."""
from __future__ import annotations

from uuid import UUID

from django.urls import path, register_converter

from jobs.metrics import metrics_view
from jobs.views import actions, pages, webhooks


class JobIdConverter:
    """A job id in any case; anything that is not a UUID does not match, so it is a 404."""

    regex = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

    def to_python(self, value: str) -> UUID:
        return UUID(value)

    def to_url(self, value: UUID | str) -> str:
        return str(UUID(str(value)))


register_converter(JobIdConverter, "jobid")

app_name = "jobs"

urlpatterns = [
    path("webhooks/jobs", webhooks.create_job, name="webhook-create-job"),
    # Prometheus (bearer token PORTICO_METRICS_TOKEN when set).
    path("metrics", metrics_view, name="metrics"),
    # Pages (GET).
    path("", pages.overview, name="overview"),
    path("queues/<path:name>/", pages.queue_detail, name="queue"),
    path("jobs/<jobid:job_id>/", pages.job_detail, name="job"),
    path("dead-letter/", pages.dead_letter, name="dead-letter"),
    path("dead-letter/bulk/preview/", pages.bulk_preview, name="bulk-preview"),
    path("dead-letter/bulk/<int:entry_id>/", pages.bulk_progress, name="bulk-progress"),
    path("audit/", pages.audit_log, name="audit"),
    # Actions (POST).
    path("jobs/<jobid:job_id>/requeue/", actions.job_requeue, name="job-requeue"),
    path("jobs/<jobid:job_id>/cancel/", actions.job_cancel, name="job-cancel"),
    path("jobs/<jobid:job_id>/discard/", actions.job_discard, name="job-discard"),
    path("dead-letter/chosen/", actions.chosen_jobs, name="chosen-jobs"),
    path("dead-letter/bulk/", actions.bulk_start, name="bulk-start"),
]
