"""One adapter per process (fork-safe), the upkeep that runs on timers, and what operators are told."""
from __future__ import annotations

import os
import re
from uuid import uuid4

import psycopg
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.utils import timezone

from jobs import maintenance, operations, services
from jobs.conf import setting
from jobs.models import AuditEntry, JobRecord, QueueSample
from jobs.queue import DatabaseJobQueueAdapter
from jobs.worker import Worker
from portico.adapters.job_queue.memory_queue import MemoryJobQueueAdapter
from portico.ports.job import Job
from portico.ports.job_queue import SyncJobQueue

pytestmark = pytest.mark.django_db(transaction=True)


def new_job(**fields) -> Job:
    return Job(**{"id": uuid4(), "queue_name": "default", "job_type": "test.job", "payload": {}, **fields})


# -- the provider ---------------------------------------------------------------------------


def test_every_caller_in_a_process_gets_the_same_adapter_per_database():
    first = services.job_queue()
    assert services.job_queue() is first and services.job_queue("default") is first
    assert services.job_service().job_queue is first
    assert isinstance(first, SyncJobQueue) and not isinstance(MemoryJobQueueAdapter(), SyncJobQueue)


def test_reset_and_a_changed_setting_give_a_new_adapter_that_reads_the_new_settings(settings):
    before = services.job_queue()
    services.reset_job_queue()
    after = services.job_queue()
    assert after is not before
    settings.PORTICO_LEASE_SECONDS = 7.0
    assert services.job_queue() is not after and services.job_queue().lease_seconds == 7.0


def test_a_forked_child_makes_its_own_adapter_and_never_uses_its_parents():
    parent = services.job_queue()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no database work, only which object it gets
        try:
            child = services.job_queue()
            answer = b"own" if child is not parent and services.job_queue() is child else b"shared"
        except Exception as exc:
            answer = type(exc).__name__.encode()
        os.write(write, answer)
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 16) == b"own" and status == 0
    os.close(read)
    assert services.job_queue() is parent


def test_no_product_module_but_the_provider_builds_an_adapter(project_root):
    built = [f"{path.relative_to(project_root)}:{n}"
             for folder in ("jobs", "portico", "portico_site") for path in sorted((project_root / folder).rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if "DatabaseJobQueueAdapter(" in line and "class DatabaseJobQueueAdapter" not in line]
    assert [place.split(":")[0] for place in built] == ["jobs/services.py"]


def test_the_built_in_worker_uses_the_provider_unless_given_an_adapter():
    assert Worker(["default"], handlers={}).job_queue is services.job_queue()
    own = DatabaseJobQueueAdapter(poll_interval=0.05)
    assert Worker(["default"], handlers={}, job_queue=own).job_queue is own
    own.close_sync()


# -- maintenance ----------------------------------------------------------------------------


def test_the_built_in_worker_has_a_timer_for_every_maintenance_task(settings):
    settings.PORTICO_SAMPLE_INTERVAL = 0
    worker = Worker(["default"], handlers={})
    timers = {name: interval for name, interval, _ in worker.maintenance}
    assert set(timers) == set(maintenance.TASKS) == {"rescue", "prune", "compact", "heal", "samples"}
    assert timers["samples"] == 0  # off: the worker starts no timer for it
    assert timers["compact"] == float(setting("PORTICO_COMPACT_INTERVAL"))


def test_portico_maintain_runs_each_task_once_or_only_those_named(empty_store, capsys):
    queue = services.job_queue()
    queue.enqueue_sync(new_job())
    call_command("portico_maintain", "--only", "samples")
    assert capsys.readouterr().out.strip() == "samples: done"
    assert QueueSample.objects.filter(queue_name="default").count() == 1
    call_command("portico_maintain")
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines()] == list(maintenance.TASKS)
    assert QueueSample.objects.filter(queue_name="default").count() == 1  # one a minute
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("portico_maintain", "--only", "vacuum")


def test_run_due_runs_what_is_due_and_says_how_long_until_the_next(empty_store, settings):
    settings.PORTICO_SAMPLE_INTERVAL = 30.0
    last_run: dict[str, float] = {}
    wait = maintenance.run_due(last_run, ["samples"])
    assert set(last_run) == {"samples"} and 29.0 < wait <= 30.0
    ran_at = last_run["samples"]
    again = maintenance.run_due(last_run, ["samples"])  # not due yet: nothing runs
    assert last_run["samples"] == ran_at and again <= wait


@pytest.mark.postgres
def test_a_task_another_process_is_running_is_skipped_not_run_twice(empty_store):
    params = connection.get_connection_params()
    dsn = {k: v for k, v in params.items() if k in ("dbname", "user", "host", "port", "password")}
    with psycopg.connect(**dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtext('portico_maintenance:compact'))")
        assert maintenance.run("compact") is False
        # The failure-group rebuild takes turns with compaction: both rewrite the group rows.
        assert maintenance.run("heal") is False
        assert maintenance.run("samples") is True
        other.execute("SELECT pg_advisory_unlock(hashtext('portico_maintenance:compact'))")
        assert maintenance.run("compact") is True


# -- what operators are told ----------------------------------------------------------------


@pytest.mark.parametrize(("action", "done"), [("requeue", "requeued"), ("cancel", "cancelled"),
                                              ("discard", "discarded")])
def test_every_action_has_its_past_tense(action, done):
    assert action in operations.ACTIONS
    assert operations.past_tense(action) == done


def test_the_admin_and_the_progress_page_say_cancelled_and_discarded(empty_store):
    queue = services.job_queue()
    waiting = queue.enqueue_sync(new_job())
    admin = Client()
    admin.force_login(User.objects.create_superuser(f"admin-{uuid4().hex[:6]}", password="pw"))
    seq = JobRecord.objects.get(id=waiting.id).seq
    page = admin.post("/admin/jobs/jobrecord/", {"action": "cancel_jobs", "_selected_action": [seq]}, follow=True)
    assert "Cancelled 1 job(s)." in page.content.decode()
    entry = AuditEntry.objects.create(actor_name="someone", action="discard", source="dashboard",
                                      scope="filter", filter={"status": "failed", "upto_seq": seq},
                                      requested=5, changed=5, finished_at=timezone.now())
    html = admin.get(f"/dead-letter/bulk/{entry.pk}/").content.decode()
    text = re.sub(r"<[^>]+>", "", html)
    assert "5 jobs discarded" in text and "discardd" not in text
