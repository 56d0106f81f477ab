"""Handlers the process tests run: each records its executions in the test_execution table."""
from __future__ import annotations

import asyncio
import os

from asgiref.sync import sync_to_async
from django.db import connection

from jobs.registry import job_handler
from portico.ports.job import Job, JobResult
from portico.ports.job_handler import JobHandler

EXECUTIONS_TABLE = """
CREATE TABLE IF NOT EXISTS test_execution (
    job_id uuid NOT NULL,
    retry_count integer NOT NULL,
    pid integer NOT NULL,
    job_type text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def record_execution(job: Job) -> None:
    """A side effect outside the job table: one row per run that reached the handler."""
    with connection.cursor() as cursor:
        cursor.execute(EXECUTIONS_TABLE)
        cursor.execute(
            "INSERT INTO test_execution (job_id, retry_count, pid, job_type) VALUES (%s, %s, %s, %s)",
            [job.id, job.retry_count, os.getpid(), job.job_type],
        )


class _Recording(JobHandler):
    async def _record(self, job: Job) -> None:
        await sync_to_async(record_execution, thread_sensitive=False)(job)


class NoopHandler(JobHandler):
    job_type = "test.noop"

    async def handle(self, job: Job) -> JobResult:
        return JobResult(success=True)


class RecordHandler(_Recording):
    job_type = "test.record"

    async def handle(self, job: Job) -> JobResult:
        await self._record(job)
        return JobResult(success=True, result_data={"pid": os.getpid()})


class SleepHandler(_Recording):
    """Records, then sleeps payload["seconds"]: a job a test can interrupt mid-run."""

    job_type = "test.sleep"

    async def handle(self, job: Job) -> JobResult:
        await self._record(job)
        await asyncio.sleep(float(job.payload.get("seconds", 1.0)))
        return JobResult(success=True, result_data={"slept": job.payload.get("seconds", 1.0)})


class FailHandler(_Recording):
    job_type = "test.fail"

    async def handle(self, job: Job) -> JobResult:
        await self._record(job)
        raise RuntimeError(f"failing on purpose (attempt {job.retry_count + 1})")


class PoisonHandler(_Recording):
    """Kills the process running it: the job that keeps killing its worker."""

    job_type = "test.poison"

    async def handle(self, job: Job) -> JobResult:
        await self._record(job)
        os._exit(13)


@job_handler("test.orm")
def count_queue_jobs(job: Job) -> dict:
    """A plain synchronous function using the ORM, as application code writes handlers."""
    from jobs.models import JobRecord

    record_execution(job)
    return {"jobs_in_queue": JobRecord.objects.filter(queue_name=job.queue_name).count()}


# A handler given to PORTICO_HANDLERS as an instance rather than a class.
noop_handler = NoopHandler()
