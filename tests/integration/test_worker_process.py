"""manage.py portico_worker as real processes: jobs run once, signals, SIGKILL, poison jobs, two workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from jobs.queue import DatabaseJobQueueAdapter
from portico.ports.job import Job, JobStatus
from tests.conftest import PROJECT_ROOT
from tests.support.handlers import EXECUTIONS_TABLE
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class WorkerProcess:
    """A ``manage.py portico_worker`` child process, its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "portico_worker", *args],
            cwd=PROJECT_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_started(self, timeout: float = 30) -> None:
        wait_for(lambda: "portico_worker started" in self.output or self.process.poll() is not None,
                 timeout, "the worker to start")
        assert self.process.poll() is None, f"the worker died at start:\n{self.output}"

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker did not exit within {timeout}s:\n{self.output}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()


def child_environment(**extra: str) -> dict[str, str]:
    """What a worker process needs to use this test's database and the test handlers."""
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    return {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "tests.support.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "worker-process-tests-only",
        "DJANGO_LOG_LEVEL": "INFO",
        **extra,
    }


@pytest.fixture
def store(empty_store):
    with connection.cursor() as cursor:
        # Created here, not by the first handler run: two processes creating it at once collide.
        cursor.execute(EXECUTIONS_TABLE)
        cursor.execute("DELETE FROM test_execution")
    adapter = DatabaseJobQueueAdapter()
    yield adapter
    adapter.close_sync()


@pytest.fixture
def start_worker(store, tmp_path: Path):
    """Start portico_worker processes; every one still alive is killed after the test."""
    started: list[WorkerProcess] = []

    def start(*args: str, wait: bool = True, **env: str) -> WorkerProcess:
        worker = WorkerProcess(list(args), child_environment(**env),
                               tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        if wait:
            worker.wait_started()
        return worker

    yield start
    for worker in started:
        worker.kill()


def new_job(job_type: str = "test.record", queue_name: str = "default", **fields: Any) -> Job:
    fields.setdefault("payload", {})
    return Job(id=uuid4(), queue_name=queue_name, job_type=job_type, **fields)


def executions(job_id: UUID | None = None) -> list[tuple[UUID, int, int]]:
    """(job id, retry count, pid) of every run that reached a handler, in the order they ran."""
    with connection.cursor() as cursor:
        where, params = ("WHERE job_id = %s", [job_id]) if job_id else ("", [])
        cursor.execute(f"SELECT job_id, retry_count, pid FROM test_execution {where} ORDER BY at", params)
        return cursor.fetchall()


def status_of(store: DatabaseJobQueueAdapter, job_id: UUID) -> JobStatus:
    return store.get_job_sync(job_id).status


def all_completed(store: DatabaseJobQueueAdapter, jobs: list[Job]) -> Callable[[], bool]:
    ids = [job.id for job in jobs]

    def check() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM portico_job WHERE id = ANY(%s) AND status = 'completed'",
                           [ids])
            return cursor.fetchone()[0] == len(ids)

    return check


def running_jobs(store: DatabaseJobQueueAdapter) -> list[Job]:
    return store.list_jobs_by_status_sync(JobStatus.RUNNING)


# -- running jobs ---------------------------------------------------------------------------


def test_jobs_enqueued_before_and_after_the_worker_starts_all_complete_once_on_every_queue(
    store, start_worker
):
    before = store.enqueue_many_sync([new_job(queue_name=q) for q in ("default", "emails") for _ in range(10)])
    worker = start_worker("--queues", "default,emails", "--concurrency", "4", "--batch", "5")
    after = store.enqueue_many_sync([new_job(queue_name=q) for q in ("default", "emails") for _ in range(10)])

    wait_for(all_completed(store, before + after), 30, "every job to complete")
    runs = Counter(job_id for job_id, _, _ in executions())
    assert runs == {job.id: 1 for job in before + after}

    output = worker.output
    assert f"portico_worker started: pid={worker.pid} queues=default,emails concurrency=4 batch=5 " \
        "handlers=" in output
    [started] = [line for line in output.splitlines() if "portico_worker started" in line]
    assert "test.record" in started and "test.orm" in started
    # One structured line per outcome, on the console.
    job = after[-1]
    assert (f"job_id={job.id} job_type=test.record queue={job.queue_name} attempt=1 "
            "outcome=completed duration=") in output

    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(15) == 0


def test_a_worker_runs_the_highest_priority_job_first_across_the_queues_it_serves(store, start_worker):
    jobs = store.enqueue_many_sync([
        new_job(queue_name="q1", priority=1, payload={"name": "low"}),
        new_job(queue_name="q2", priority=9, payload={"name": "high"}),
        new_job(queue_name="q1", priority=5, payload={"name": "middle"}),
        new_job(queue_name="q2", priority=0, payload={"name": "lowest"}),
    ])
    elsewhere = store.enqueue_sync(new_job(queue_name="q3", priority=99))
    start_worker("--queues", "q1,q2", "--concurrency", "1")

    wait_for(all_completed(store, jobs), 30, "the jobs of q1 and q2 to complete")
    by_id = {job.id: job.payload["name"] for job in jobs}
    assert [by_id[job_id] for job_id, _, _ in executions()] == ["high", "middle", "low", "lowest"]
    assert status_of(store, elsewhere.id) is JobStatus.PENDING


def test_a_synchronous_handler_function_using_the_orm_runs_in_the_worker(store, start_worker):
    job = store.enqueue_sync(new_job("test.orm", queue_name="orm"))
    start_worker("--queues", "orm")

    wait_for(all_completed(store, [job]), 30, "the ORM job to complete")
    assert store.get_result_sync(job.id) == {"jobs_in_queue": 1}
    assert [(job_id, retries) for job_id, retries, _ in executions()] == [(job.id, 0)]


# -- processes dying ------------------------------------------------------------------------


def test_a_job_whose_worker_is_killed_mid_run_is_rescued_by_a_restarted_worker_and_completes_once(
    store, start_worker
):
    job = store.enqueue_sync(new_job("test.sleep", payload={"seconds": 2.0}, max_retries=3))
    first = start_worker()
    wait_for(lambda: executions(job.id), 30, "the job to start")
    first.process.send_signal(signal.SIGKILL)
    first.wait_exit(10)
    assert status_of(store, job.id) is JobStatus.RUNNING  # orphaned, until its lease runs out

    second = start_worker()
    wait_for(all_completed(store, [job]), 30, "the rescued job to complete")

    runs = executions(job.id)
    assert [retries for _, retries, _ in runs] == [0, 1]  # one run per attempt
    assert [pid for _, _, pid in runs] == [first.pid, second.pid]
    attempts = store.get_job_attempts_sync(job.id)
    assert [(a.outcome, a.error_message) for a in attempts] == [
        ("retrying", "worker lost"), ("completed", None)]
    assert store.get_job_sync(job.id).retry_count == 1
    assert "rescued 1 job(s)" in second.output
    assert running_jobs(store) == []


def test_a_poison_job_ends_in_dead_letter_after_its_retries_without_a_crash_loop(store, start_worker):
    pill = store.enqueue_sync(new_job("test.poison", max_retries=2))
    # Not waiting for the start line: the pill may kill a worker the moment it has started.
    restarts = 0
    worker = start_worker(wait=False)
    for _ in range(6):  # bounded: three deaths are expected, six would be a crash loop
        wait_for(lambda current=worker: current.process.poll() is not None
                 or status_of(store, pill.id) is JobStatus.DEAD_LETTER, 30,
                 "the worker to die or the job to reach dead letter")
        if worker.process.poll() is None:
            break
        assert worker.process.returncode == 13, worker.output  # os._exit(13) in the handler
        restarts += 1
        worker = start_worker(wait=False)

    dead = store.get_job_sync(pill.id)
    assert dead.status is JobStatus.DEAD_LETTER
    assert restarts == 3
    assert [retries for _, retries, _ in executions(pill.id)] == [0, 1, 2]
    attempts = store.get_job_attempts_sync(pill.id)
    assert [(a.outcome, a.error_message) for a in attempts] == [
        ("retrying", "worker lost"), ("retrying", "worker lost"), ("dead_letter", "worker lost")]

    # The last worker survived the pill and keeps working.
    after = store.enqueue_sync(new_job())
    wait_for(all_completed(store, [after]), 30, "a job after the pill to complete")
    assert worker.process.poll() is None
    assert running_jobs(store) == []


# -- signals --------------------------------------------------------------------------------


def test_sigterm_lets_short_jobs_finish_releases_a_long_one_and_exits_zero(store, start_worker):
    short = store.enqueue_many_sync([new_job("test.sleep", payload={"seconds": 0.5}) for _ in range(3)])
    long = store.enqueue_sync(new_job("test.sleep", payload={"seconds": 60}, max_retries=3))
    worker = start_worker("--concurrency", "4", PORTICO_TEST_GRACE_PERIOD="1.5")
    wait_for(lambda: len(executions()) == 4, 30, "all four jobs to start")

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(15) == 0
    assert time.monotonic() - signalled < 1.5 + 3  # the grace period, and a little to release

    assert all_completed(store, short)()
    back = store.get_job_sync(long.id)
    assert back.status is JobStatus.PENDING and back.retry_count == 0
    assert [a.outcome for a in store.get_job_attempts_sync(long.id)] == ["released"]
    assert running_jobs(store) == []
    assert "SIGTERM received" in worker.output
    assert f"job_id={long.id} job_type=test.sleep queue=default attempt=1 outcome=released" in worker.output
    assert "portico_worker stopped" in worker.output


def test_sigint_stops_an_idle_worker_at_once_with_exit_status_zero(store, start_worker):
    worker = start_worker()
    signalled = time.monotonic()
    worker.signal(signal.SIGINT)
    assert worker.wait_exit(10) == 0
    assert time.monotonic() - signalled < 3
    assert "SIGINT received" in worker.output


def test_a_second_signal_exits_at_once_and_the_lease_brings_the_job_back(store, start_worker):
    job = store.enqueue_sync(new_job("test.sleep", payload={"seconds": 60}, max_retries=3))
    worker = start_worker()  # grace period 10 s: longer than this test waits
    wait_for(lambda: executions(job.id), 30, "the job to start")

    worker.signal(signal.SIGTERM)
    wait_for(lambda: "portico_worker stopping" in worker.output, 10, "the worker to begin stopping")
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(5) == 128 + signal.SIGTERM
    assert time.monotonic() - signalled < 2
    assert "SIGTERM again, exiting at once" in worker.output

    assert status_of(store, job.id) is JobStatus.RUNNING  # abandoned, not released...
    wait_for(store.rescue_sync, 15, "the job's lease to run out")  # ...until its lease ends
    rescued = store.get_job_sync(job.id)
    assert rescued.status is JobStatus.RETRYING and rescued.retry_count == 1


# -- two workers ----------------------------------------------------------------------------


def test_two_worker_processes_run_each_of_a_thousand_jobs_exactly_once(store, start_worker):
    jobs = store.enqueue_many_sync([new_job(payload={"i": i}, priority=i % 3) for i in range(1000)])
    workers = [start_worker("--concurrency", "4", wait=False) for _ in range(2)]

    wait_for(all_completed(store, jobs), 90, "a thousand jobs to complete")
    runs = executions()
    per_job = Counter(job_id for job_id, _, _ in runs)
    assert len(per_job) == 1000
    assert [job_id for job_id, times in per_job.items() if times != 1] == []
    assert {pid for _, _, pid in runs} <= {worker.pid for worker in workers}
    stats = store.get_queue_stats_sync("default")
    assert (stats.completed_count, stats.running_count, stats.pending_count) == (1000, 0, 0)
    assert stats.completed_total == 1000
    assert store.counter_drift_sync() == {}

    for worker in workers:
        worker.signal(signal.SIGTERM)
    assert [worker.wait_exit(15) for worker in workers] == [0, 0]


# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    ["--queues", " , "], ["--concurrency", "0"], ["--batch", "0"],
])
def test_options_that_leave_nothing_to_run_are_refused_before_the_worker_starts(options):
    with pytest.raises(CommandError, match=options[0]):
        call_command("portico_worker", *options)
