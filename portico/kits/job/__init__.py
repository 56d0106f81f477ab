"""The job kit: creating jobs (JobService) and running them (WorkerManager)."""
from __future__ import annotations

from portico.kits.job.retry import RetryPolicy
from portico.kits.job.service import JobService
from portico.kits.job.worker import JobExecutor, LeasesLostError, WorkerManager

__all__ = ["JobExecutor", "JobService", "LeasesLostError", "RetryPolicy", "WorkerManager"]
