"""The job store: the job table, each job's past attempts, and the maintained counters."""
from __future__ import annotations

import json
from typing import Any

from django.db import models
from django.db.models import Q

from portico.ports.job import Job, JobAttempt, JobStatus

STATUS_CHOICES = [(status.value, status.value.replace("_", " ")) for status in JobStatus]
WAITING = Q(status__in=["pending", "scheduled", "retrying"])


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
            # Dashboard filters: a queue's jobs in one status, newest or oldest first.
            models.Index(fields=["queue_name", "status", "seq"], name="portico_job_queue_status"),
            # list_jobs_by_status across queues, and the dead-letter page.
            models.Index(fields=["status", "seq"], name="portico_job_status"),
            # list_jobs_by_type.
            models.Index(fields=["job_type", "seq"], name="portico_job_type"),
            # Rescue: running jobs whose lease ran out, without scanning the rest.
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

    def to_domain(self) -> Job:
        return Job(
            id=self.id,
            queue_name=self.queue_name,
            job_type=self.job_type,
            payload=_json(self.payload),
            priority=self.priority,
            max_retries=self.max_retries,
            retry_count=self.retry_count,
            scheduled_at=self.scheduled_at,
            started_at=self.started_at,
            completed_at=self.completed_at,
            failed_at=self.failed_at,
            status=JobStatus(self.status),
            error_message=self.error_message,
            created_by=self.created_by,
            created_at=self.created_at,
            metadata=_json(self.metadata),
        )


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

    def to_domain(self, job_id) -> JobAttempt:
        return JobAttempt(
            job_id=job_id,
            attempt=self.attempt,
            started_at=self.started_at,
            finished_at=self.finished_at,
            outcome=self.outcome,
            error_message=self.error_message,
        )


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


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
