"""The job store: the job table, each job's past attempts, and the maintained counters.

Rows become domain objects in one place, the adapter's row mapping (jobs.queue), never here:
the dashboard and the admin display these rows as they are.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from jobs.queue import BUSY_STATUSES
from portico.ports.job import STATUS_VALUES, WAITING_VALUES, JobStatus

STATUS_CHOICES = [(status.value, status.value.replace("_", " ")) for status in JobStatus]
WAITING = Q(status__in=list(WAITING_VALUES))
# Every status but the three each job passes through (jobs.queue.BUSY_STATUSES).
RESTING = Q(status__in=[status for status in STATUS_VALUES if status not in BUSY_STATUSES])
NOT_RUNNING = ~Q(status="running")


class JobRecord(models.Model):
    """One row per job: every field of the domain Job, plus what the store needs to run it."""

    # Insertion order: the tie-breaker of "oldest first", and a compact key for joins.
    seq = models.BigAutoField(primary_key=True)
    id = models.UUIDField(unique=True, editable=False)
    queue_name = models.CharField(max_length=200)
    job_type = models.CharField(max_length=200)
    payload = models.JSONField(default=dict)
    priority = models.IntegerField(default=0)
    max_retries = models.IntegerField(default=3)
    retry_count = models.IntegerField(default=0)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default="pending")
    error_message = models.TextField(null=True, blank=True)
    created_by = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField()
    metadata = models.JSONField(default=dict)
    # What the store adds: when the job is next due, the result it completed with, how many
    # times it was claimed, and until when the current claim holds without a heartbeat.
    run_at = models.DateTimeField()
    result_data = models.JSONField(null=True, blank=True)
    attempt = models.IntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "portico_job"
        verbose_name = "job"
        ordering = ["-seq"]
        indexes = [
            # The claim: per queue, highest priority then oldest, over waiting rows only, so
            # finished history never slows a dequeue; run_at is carried to test "due" in the
            # index without visiting the table.
            models.Index(
                "queue_name", models.F("priority").desc(), "seq",
                name="portico_job_claim", condition=WAITING, include=["run_at"],
            ),
            # Latency (the oldest due job per queue) and the wait for scheduled jobs.
            models.Index(fields=["queue_name", "run_at"], name="portico_job_due", condition=WAITING),
            # Dashboard filters: a queue's jobs in one status, newest or oldest first. Running
            # jobs are left out here and in portico_job_type: a claim would write an entry
            # into both (11% of the database's work per job); portico_job_lease holds them.
            models.Index(fields=["queue_name", "status", "seq"], name="portico_job_queue_status",
                         condition=NOT_RUNNING),
            # list_jobs_by_status across queues, for the statuses a job rests in when something
            # went wrong or waits on a clock. Pending, running and completed jobs are left out:
            # every claim and acknowledgement would write an entry here (7% of the database's
            # work per job); they are listed across queues through portico_job_queue_status.
            models.Index(fields=["status", "seq"], name="portico_job_status", condition=RESTING),
            # list_jobs_by_type (running jobs: through portico_job_lease).
            models.Index(fields=["job_type", "seq"], name="portico_job_type", condition=NOT_RUNNING),
            # Rescue: running jobs whose lease ran out, without scanning the rest; and every
            # listing of running jobs (the two indexes above leave them out).
            models.Index(
                fields=["lease_expires_at"], name="portico_job_lease", condition=Q(status="running")
            ),
            # Retention: the oldest completed jobs, pruned in batches.
            models.Index(
                fields=["completed_at"], name="portico_job_completed", condition=Q(status="completed")
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job_type} {self.id} ({self.status})"


class JobAttemptRecord(models.Model):
    """A run of a job that did not complete: failed, retried, released or lost.

    The completed run is the job row itself (started_at, completed_at, result_data), so the
    hot acknowledge path writes one row, and a requeued job keeps every failure it had.
    """

    job = models.ForeignKey(JobRecord, on_delete=models.CASCADE, related_name="attempts",
                            db_column="job_seq")
    attempt = models.IntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    outcome = models.CharField(max_length=16)
    error_message = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "portico_job_attempt"
        ordering = ["job", "attempt", "id"]


class QueueCounter(models.Model):
    """Per-queue counts kept by database triggers in the same transaction as each change.

    Each changing statement appends delta rows (never updates a shared row, so workers do
    not queue behind one counter); compaction folds them into one row per (queue, name).
    ``name`` is a status (current count) or ``<event>_total`` (lifetime total, kept
    across pruning).
    """

    queue_name = models.CharField(max_length=200)
    name = models.CharField(max_length=32)
    value = models.BigIntegerField()

    class Meta:
        db_table = "portico_queue_counter"
        # One queue's counters without reading the others'.
        indexes = [models.Index(fields=["queue_name", "name"], name="portico_counter_queue")]


class ScheduleFire(models.Model):
    """A fire time of a PORTICO_SCHEDULES entry that has its job.

    The scheduler inserts this row in the same transaction as the job; the unique
    (schedule, fire_at) pair makes every other scheduler process that tries the same fire
    time fail on it, so each fire time gets exactly one job however many schedulers run.
    ``job_id`` is deliberately not a foreign key: pruning deletes finished jobs, and the
    fire must stay recorded after its job is gone or it could be created again.
    """

    schedule = models.CharField(max_length=200)
    # The fire time as a UTC instant (the schedule's own zone only decides which instants).
    fire_at = models.DateTimeField()
    # None marks where a new schedule started: its latest past fire time, which gets no job.
    job_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "portico_schedule_fire"
        ordering = ["schedule", "-fire_at"]
        constraints = [
            # Its index also answers "the latest fire of each schedule" at scheduler start.
            models.UniqueConstraint(fields=["schedule", "fire_at"], name="portico_schedule_fire_once"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule} at {self.fire_at.isoformat()} -> {self.job_id or 'start, no job'}"


class WebhookIdempotencyKey(models.Model):
    """An ``Idempotency-Key`` the webhook has seen, and the job and response it produced.

    Created in the same transaction as the job, under a unique key: a repeated or
    concurrent request with the same key gets this job back, never a second one.
    """

    key = models.CharField(max_length=200)
    job_id = models.UUIDField()
    # Fingerprint of the request's fields, so a key reused for a different request is refused.
    request_sha256 = models.CharField(max_length=64)
    # The body of the 201 response, replayed with 200 for a repeat of the request.
    response = models.JSONField()
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "portico_webhook_idempotency_key"
        constraints = [
            models.UniqueConstraint(fields=["key"], name="portico_webhook_key_once"),
        ]

    def __str__(self) -> str:
        return f"{self.key} -> {self.job_id}"


class AuditEntry(models.Model):
    """One operator action (requeue, cancel, discard) from the dashboard or the admin.

    Written in the same transaction as the jobs it changed; an action over a filter runs in
    batches, and each batch adds its counts to the entry in that batch's own transaction,
    so the entry never claims more than what happened.
    """

    ACTIONS = [("requeue", "requeue"), ("cancel", "cancel"), ("discard", "discard")]
    SOURCES = [("dashboard", "dashboard"), ("admin", "admin")]
    SCOPES = [("jobs", "chosen jobs"), ("filter", "every job matching a filter")]

    at = models.DateTimeField(db_default=Now())
    # The user may be deleted later; their name stays with what they did.
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                              related_name="+")
    actor_name = models.CharField(max_length=150)
    action = models.CharField(max_length=16, choices=ACTIONS)
    source = models.CharField(max_length=16, choices=SOURCES)
    scope = models.CharField(max_length=16, choices=SCOPES)
    # The jobs asked for by id (scope "jobs"), as strings.
    job_ids = models.JSONField(default=list, blank=True)
    # The filter (scope "filter"), with the highest job seq it could reach when it started.
    filter = models.JSONField(default=dict, blank=True)
    requested = models.IntegerField(default=0)
    changed = models.IntegerField(default=0)
    # Jobs that were asked for but whose state no longer allowed the action, or were gone.
    refused = models.IntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Why a run over a filter stopped early, if it did.
    error = models.TextField(blank=True, default="")

    class Meta:
        db_table = "portico_audit_entry"
        verbose_name = "audit entry"
        verbose_name_plural = "audit entries"
        ordering = ["-id"]
        permissions = [("operate_jobs", "Can requeue, cancel and discard jobs")]

    def __str__(self) -> str:
        return f"{self.actor_name} {self.action} {self.changed} job(s) at {self.at:%Y-%m-%d %H:%M:%S}"

    @property
    def running(self) -> bool:
        return self.finished_at is None


class QueueSample(models.Model):
    """A queue's lifetime totals at the start of a minute: the overview's last-hour sparklines.

    The maintenance (jobs.maintenance, "samples") writes the first sample of each minute; the
    difference between consecutive samples is that minute's throughput, read without
    touching the job table.
    """

    queue_name = models.CharField(max_length=200)
    minute = models.DateTimeField()
    completed_total = models.BigIntegerField()
    # Failed runs: retried, dead-lettered and failed (cancellations included).
    failed_total = models.BigIntegerField()

    class Meta:
        db_table = "portico_queue_sample"
        constraints = [
            models.UniqueConstraint(fields=["minute", "queue_name"], name="portico_queue_sample_once"),
        ]


class FailureDelta(models.Model):
    """Failed and dead-letter jobs grouped by queue, job type and error fingerprint (PostgreSQL).

    Row triggers append +1 when a job enters one of those statuses and -1 when it leaves, in
    the same transaction, so the dead-letter page sums a few rows per group instead of
    reading every failed job; compaction folds them like the queue counters. ``first_seen``
    and ``last_seen`` span the failures that entered the group since it was last empty.
    """

    status = models.CharField(max_length=16)
    queue_name = models.CharField(max_length=200)
    job_type = models.CharField(max_length=200)
    fingerprint = models.TextField()
    delta = models.BigIntegerField()
    first_seen = models.DateTimeField(null=True)
    last_seen = models.DateTimeField(null=True)

    class Meta:
        db_table = "portico_failure_delta"
        indexes = [models.Index(fields=["status", "queue_name"], name="portico_failure_status")]


class WorkerRecord(models.Model):
    """A process that runs jobs (``portico_worker`` or a Celery worker), as last heard from.

    Each worker upserts its row at start and on every heartbeat, and deletes it when it
    stops; a worker is live while its last heartbeat is younger than a lease
    (``PORTICO_LEASE_SECONDS``). /metrics counts the live ones per queue
    (``portico_workers``); the hostname and pid stay here, never in a metric label.
    """

    # "<hostname>:<pid>:<random>", unique per process start.
    worker_id = models.CharField(max_length=64, primary_key=True)
    kind = models.CharField(max_length=16)  # "builtin" or "celery"
    hostname = models.CharField(max_length=255)
    pid = models.IntegerField()
    # The Portico queues it claims from.
    queues = models.JSONField(default=list)
    started_at = models.DateTimeField(db_default=Now())
    last_seen_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "portico_worker"
        ordering = ["-last_seen_at"]
        verbose_name = "worker"

    def __str__(self) -> str:
        return f"{self.kind} worker {self.worker_id}"
