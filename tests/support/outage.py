"""The handler the database outage tests run: it records its run, then naps, its connections looked after."""
from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from portico.ports.job import Job, JobResult
from portico.ports.job_handler import JobHandler
from tests.support.handlers import record_execution


def record_on_a_fresh_connection(job: Job) -> None:
    """record_execution, dropping a connection the outage broke first, as handler threads should."""
    close_old_connections()
    try:
        record_execution(job)
    finally:
        close_old_connections()


class NapHandler(JobHandler):
    """Records its run, then sleeps ``payload["seconds"][attempt]`` (the last value for later attempts)."""

    job_type = "test.nap"

    async def handle(self, job: Job) -> JobResult:
        await sync_to_async(record_on_a_fresh_connection, thread_sensitive=False)(job)
        seconds = job.payload.get("seconds", [0])
        await asyncio.sleep(float(seconds[min(job.retry_count, len(seconds) - 1)]))
        return JobResult(success=True)
