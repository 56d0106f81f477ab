"""Django admin for jobs and the audit trail: read-only displays, and actions through jobs.operations.

Nothing here edits a job row directly: requeue and cancel are the dashboard's own
operations (same state rules, same audit entries), and jobs cannot be added, changed or
deleted in a form.
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property
from django.utils.html import format_html

from jobs import operations, queries
from jobs.models import AuditEntry, JobRecord, QueueCounter
from jobs.views.access import OPERATE
from jobs.views.display import pretty_json

# The admin counts its result pages; past this many rows it stops counting and says so.
COUNT_CAP = 10_000


class CappedCountPaginator(Paginator):
    """Counts at most COUNT_CAP rows: a filter over ten million jobs stays quick.

    Past the cap the admin says "10000 results" and pages that far; the dashboard's keyset
    pages go everywhere.
    """

    @cached_property
    def count(self) -> int:
        return self.object_list.order_by()[:COUNT_CAP].count()


class QueueFilter(admin.SimpleListFilter):
    """Queues from the counters table: listing distinct queue names would read every job."""

    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        names = QueueCounter.objects.values_list("queue_name", flat=True).distinct().order_by("queue_name")
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(queue_name=self.value()) if self.value() else queryset


@admin.register(JobRecord)
class JobRecordAdmin(admin.ModelAdmin):
    list_display = ("short_id", "queue_name", "job_type", "status", "priority", "retries", "created_at")
    list_filter = ("status", QueueFilter)
    search_fields = ("job_type",)
    search_help_text = "A job id (exact), a job type (exact), or words from the error message."
    list_per_page = 50
    # Facet counts would count the job table once per status and queue.
    show_facets = admin.ShowFacets.NEVER
    list_max_show_all = 200
    show_full_result_count = False
    paginator = CappedCountPaginator
    ordering = ("-seq",)
    actions = ("requeue_jobs", "cancel_jobs")
    fields = ("id", "queue_name", "job_type", "status", "priority", "retry_count", "max_retries",
              "attempt", "created_at", "scheduled_at", "run_at", "started_at", "completed_at",
              "failed_at", "lease_expires_at", "created_by", "error_message", "payload_json",
              "metadata_json", "result_json")
    readonly_fields = fields

    @admin.display(description="id", ordering="seq")
    def short_id(self, job: JobRecord) -> str:
        return str(job.id)

    @admin.display(description="retries")
    def retries(self, job: JobRecord) -> str:
        return f"{job.retry_count}/{job.max_retries}"

    @admin.display(description="payload")
    def payload_json(self, job: JobRecord) -> str:
        return format_html('<pre class="json">{}</pre>', pretty_json(job.payload))

    @admin.display(description="metadata")
    def metadata_json(self, job: JobRecord) -> str:
        return format_html('<pre class="json">{}</pre>', pretty_json(job.metadata))

    @admin.display(description="result")
    def result_json(self, job: JobRecord) -> str:
        if job.result_data is None:
            return "—"
        return format_html('<pre class="json">{}</pre>', pretty_json(job.result_data))

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).defer("payload", "metadata", "result_data")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet,
                           search_term: str) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        job_id = queries.as_uuid(term)
        if job_id is not None:
            return queryset.filter(id=job_id), False
        # Written so each arm can use its index: portico_job_type leaves running jobs out,
        # portico_job_lease holds only them.
        by_type = queryset.filter((Q(job_type=term) & ~Q(status="running"))
                                  | Q(job_type=term, status="running"))
        if by_type.exists():
            return by_type, False
        return queryset.filter(error_message__icontains=term), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: JobRecord | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: JobRecord | None = None) -> bool:
        # Deleting is the dashboard's discard: confirmed, state-checked and audited.
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OPERATE)

    def _act(self, request: HttpRequest, queryset: QuerySet, action: str) -> None:
        ids = list(queryset.order_by().values_list("id", flat=True)[:operations.MAX_CHOSEN + 1])
        if len(ids) > operations.MAX_CHOSEN:
            self.message_user(request, f"At most {operations.MAX_CHOSEN} jobs at once here; the "
                              "dashboard's dead-letter page acts on every job matching a filter.",
                              messages.ERROR)
            return
        outcome = operations.act_on_jobs(action, ids, user=request.user, source="admin")
        if outcome.changed:
            self.message_user(request, f"{operations.past_tense(action).capitalize()} {len(outcome.changed)} job(s).",
                              messages.SUCCESS)
        if outcome.refused:
            first = next(iter(outcome.refused.values()))
            self.message_user(request, f"{len(outcome.refused)} job(s) refused, e.g. {first}",
                              messages.WARNING)

    @admin.action(description="Requeue selected failed or dead-letter jobs", permissions=["operate"])
    def requeue_jobs(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._act(request, queryset, "requeue")

    @admin.action(description="Cancel selected jobs not yet running", permissions=["operate"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._act(request, queryset, "cancel")


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("at", "actor_name", "source", "action", "scope", "requested", "changed", "refused",
                    "finished_at")
    list_filter = ("action", "source", "scope")
    search_fields = ("actor_name",)
    ordering = ("-id",)
    readonly_fields = ("at", "actor", "actor_name", "action", "source", "scope", "job_ids", "filter",
                       "requested", "changed", "refused", "finished_at", "error")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False
