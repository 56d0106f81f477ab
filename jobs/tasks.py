"""Portico's Celery tasks: the doorbell that runs a queue's due jobs, and the upkeep beat sends."""
from __future__ import annotations

from celery import shared_task

from jobs import dispatch
from jobs.services import job_queue


@shared_task(name=dispatch.RUN_QUEUE)
def run_queue(queue_name: str) -> None:
    """Run the due jobs of ``queue_name``: the message names a queue, never a job."""
    dispatch.answer(queue_name)


@shared_task(name=dispatch.SWEEP)
def sweep() -> None:
    """Ring for every queue with due jobs and no waiting doorbell."""
    dispatch.sweep()


@shared_task(name=dispatch.RESCUE)
def rescue() -> None:
    """Take back the running jobs whose lease ran out (their worker died)."""
    job_queue().rescue_sync()


@shared_task(name=dispatch.PRUNE)
def prune() -> None:
    """Delete completed jobs older than PORTICO_RETENTION."""
    job_queue().prune_sync()


@shared_task(name=dispatch.COMPACT_COUNTERS)
def compact_counters() -> None:
    """Fold the counter table's delta rows together."""
    job_queue().compact_counters_sync()
