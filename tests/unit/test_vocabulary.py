"""The job vocabulary is written once, in portico.ports.job, and everything else derives from it."""
from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from portico import lifecycle
from portico.kits.job.service import JobService
from portico.ports.job import (
    BACKLOG_PENDING,
    DEFAULT_MAX_RETRIES,
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    ERROR_STATUSES,
    FAILING_MIN_PROCESSED,
    FAILING_RATE,
    FAILURE_STATUSES,
    STATUS_FLOW,
    STATUS_VALUES,
    TERMINAL_STATUSES,
    WAITING_STATUSES,
    WAITING_VALUES,
    Job,
    JobStatus,
    QueueStats,
    failure_rate,
)
from portico.ports.job_creator import JobCreator


def stats(**counts: int) -> QueueStats:
    values = {"queue_name": "q", "pending_count": 0, "running_count": 0, "completed_count": 0,
              "failed_count": 0, "dead_letter_count": 0}
    return QueueStats(**{**values, **counts})


def test_the_status_sets_cover_every_status_once_in_the_enums_order():
    assert STATUS_VALUES == ("pending", "scheduled", "running", "completed", "failed", "retrying", "dead_letter")
    assert WAITING_VALUES == ("pending", "scheduled", "retrying")
    assert set(STATUS_FLOW) == set(JobStatus) and len(STATUS_FLOW) == len(JobStatus)
    assert WAITING_STATUSES | TERMINAL_STATUSES | {JobStatus.RUNNING} == set(JobStatus)
    assert FAILURE_STATUSES < TERMINAL_STATUSES and FAILURE_STATUSES < ERROR_STATUSES
    assert lifecycle.REQUEUEABLE == FAILURE_STATUSES
    assert "cancelled" not in STATUS_VALUES  # a cancelled job is FAILED with "Job cancelled"


def test_a_jobs_defaults_and_the_creators_are_the_vocabularys():
    fields = {f.name: f.default for f in dataclasses.fields(Job)}
    assert (fields["priority"], fields["max_retries"]) == (DEFAULT_PRIORITY, DEFAULT_MAX_RETRIES) == (0, 3)
    assert DEFAULT_QUEUE == "default"
    for creator in (JobCreator.create_job, JobService.create_job, JobService.build_job):
        parameters = inspect.signature(creator).parameters
        assert parameters["queue_name"].default == DEFAULT_QUEUE
        assert parameters["priority"].default == DEFAULT_PRIORITY


@pytest.mark.parametrize(("completed", "failed", "dead", "rate"), [
    (0, 0, 0, 0.0), (1, 1, 0, 0.5), (1, 0, 1, 0.5), (0, 3, 1, 1.0), (6, 1, 1, 0.25),
])
def test_the_failure_rate_is_the_seeds_one_formula(completed, failed, dead, rate):
    assert failure_rate(completed, failed, dead) == rate
    assert stats(completed_count=completed, failed_count=failed, dead_letter_count=dead).failure_rate == rate


def test_a_queue_is_failing_only_past_both_thresholds_and_backlogged_past_its_own():
    assert (FAILING_MIN_PROCESSED, FAILING_RATE, BACKLOG_PENDING) == (100, 0.05, 1000)
    assert stats(completed_count=90, failed_count=11).is_failing  # 101 processed, 10.9%
    assert not stats(completed_count=85, failed_count=15).is_failing  # only 100 processed
    assert not stats(completed_count=950, dead_letter_count=50).is_failing  # exactly 5%
    assert stats(completed_count=940, dead_letter_count=60).is_failing
    assert not stats(pending_count=1000).has_backlog
    assert stats(pending_count=1001).has_backlog


def test_failed_runs_count_retries_dead_letters_and_failures():
    assert stats(failed_total=2, dead_lettered_total=3, retried_total=5).failed_runs_total == 10


def test_no_product_module_spells_out_a_list_of_statuses(project_root):
    # Three status names in a row, quoted: a list written by hand instead of derived.
    name = r"[\"'](%s)[\"']" % "|".join(STATUS_VALUES)
    listed = re.compile(r"\s*,\s*".join([name] * 3))
    found = [f"{path.relative_to(project_root)}:{n}"
             for folder in ("jobs", "portico") for path in sorted((project_root / folder).rglob("*.py"))
             if "migrations" not in path.parts
             for n, line in enumerate(path.read_text().splitlines(), 1) if listed.search(line)]
    assert found == []
