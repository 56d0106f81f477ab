"""Portico's Celery tasks: the doorbell that runs a queue's due jobs, and the upkeep beat sends."""
from __future__ import annotations

from celery import shared_task

from jobs import dispatch, maintenance


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
    maintenance.run("rescue")


@shared_task(name=dispatch.PRUNE)
def prune() -> None:
    """Delete completed jobs older than PORTICO_RETENTION."""
    maintenance.run("prune")


@shared_task(name=dispatch.COMPACT_COUNTERS)
def compact_counters() -> None:
    """Fold the delta rows of the counter table and of the failure groups together."""
    maintenance.run("compact")


@shared_task(name=dispatch.HEAL_FAILURE_GROUPS)
def heal_failure_groups() -> None:
    """Rebuild the failure groups of queues whose groups no longer add up to their counts."""
    maintenance.run("heal")


@shared_task(name=dispatch.RECORD_SAMPLES)
def record_samples() -> None:
    """Take this minute's throughput sample of every queue, unless it is taken."""
    maintenance.run("samples")
