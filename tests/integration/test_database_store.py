"""The database job store beyond the shared contract: batches, counters, retention, transactions, processes."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from jobs.models import JobRecord, QueueCounter
from jobs.queue import BUSY_STATUSES, DatabaseJobQueueAdapter
from portico.ports.job import JobStatus

pytestmark = pytest.mark.django_db(transaction=True)
WORKER_SCRIPT = Path(__file__).with_name("claim_worker.py")


def test_a_bulk_enqueue_larger_than_one_statement_stores_every_job(store, job):
    stored = store.enqueue_many_sync([job(payload={"i": i}) for i in range(2500)])
    assert len(stored) == 2500
    assert store.get_queue_stats_sync("default").pending_count == 2500
    assert JobRecord.objects.count() == 2500


def test_a_duplicate_id_in_a_bulk_enqueue_stores_none_of_it(store, job):
    existing = store.enqueue_sync(job())
    batch = [job() for _ in range(1500)] + [job(id=existing.id)]
    with pytest.raises(ValueError, match=str(existing.id)):
        store.enqueue_many_sync(batch)
    assert JobRecord.objects.count() == 1
    assert store.counter_drift_sync() == {}


def test_an_enqueue_inside_a_transaction_that_rolls_back_leaves_nothing(store, job):
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        store.enqueue_sync(job())
        raise Abort
    assert JobRecord.objects.count() == 0
    assert store.get_queue_stats_sync("default").enqueued_total == 0


def test_a_duplicate_inside_a_transaction_leaves_the_transaction_usable(store, job):
    first = job()
    with transaction.atomic():
        store.enqueue_sync(first)
        with pytest.raises(ValueError):
            store.enqueue_sync(job(id=first.id))
        store.enqueue_sync(job())
    assert JobRecord.objects.count() == 2


def test_bad_input_leaves_no_row_and_no_count(store, job):
    from datetime import datetime

    bad = [
        job(payload={"when": object()}),
        job(payload={"text": "a\x00b"}),
        job(scheduled_at=datetime.now()),  # noqa: DTZ005 - naive on purpose
        job(payload={"big": "x" * 400_000}),
    ]
    for candidate in bad:
        with pytest.raises(ValueError):
            store.enqueue_sync(candidate)
    assert JobRecord.objects.count() == 0
    assert QueueCounter.objects.count() == 0


def test_a_batch_claim_takes_the_best_jobs_in_one_statement(store, job):
    store.enqueue_many_sync([job(priority=i % 3, payload={"i": i}) for i in range(30)])
    claimed = store.dequeue_many_sync("default", 10)
    assert len(claimed) == 10
    assert all(j.priority == 2 for j in claimed)
    assert all(j.status is JobStatus.RUNNING for j in claimed)
    stats = store.get_queue_stats_sync("default")
    assert (stats.pending_count, stats.running_count) == (20, 10)


def test_listing_by_status_across_queues_is_oldest_first_for_every_status(store, job):
    # Pending, running and completed jobs are listed by one walk per queue (the status
    # index leaves them out); the rest through the status index. Both must give the
    # same answer as a plain filter on the table.
    store.enqueue_many_sync([job(queue_name="abc"[i % 3], payload={"i": i}, max_retries=i % 2)
                             for i in range(60)])
    for name in "abc":
        claimed = store.dequeue_many_sync(name, 8)
        store.acknowledge_many_sync(claimed[:3])
        store.reject_many_sync(claimed[3:6], ["boom"] * 3)  # retrying or dead letter
        store.reject_many_sync(claimed[6:7], ["boom"], requeue=False)  # failed
        store.cancel_job_sync(store.dequeue_many_sync(name, 1)[0].id)
    store.enqueue_sync(job(queue_name="b", scheduled_at=store.get_job_sync(
        store.list_jobs_by_status_sync(JobStatus.PENDING, 1)[0].id).created_at + timedelta(hours=1)))
    for status in JobStatus:
        every = list(JobRecord.objects.filter(status=status.value).order_by("seq").values_list("id", flat=True))
        assert every, f"the test should have made some {status.value} jobs"
        for limit in (None, 1, 4, 1000):
            listed = [j.id for j in store.list_jobs_by_status_sync(status, limit)]
            assert listed == every[:limit], (status, limit)
            assert all(j.status is status for j in store.list_jobs_by_status_sync(status, limit))


def test_listing_by_type_includes_running_jobs_oldest_first(store, job):
    # portico_job_type leaves running jobs out; list_jobs_by_type takes them from the
    # lease index. Same answer as a plain filter on the table, for every limit.
    store.enqueue_many_sync([job(queue_name="ab"[i % 2], job_type=f"t{i % 3}") for i in range(40)])
    store.acknowledge_many_sync(store.dequeue_many_sync("a", 6))
    store.dequeue_many_sync(["a", "b"], 9)  # left running
    for job_type in ("t0", "t1", "t2", "none"):
        every = list(JobRecord.objects.filter(job_type=job_type).order_by("seq").values_list("id", flat=True))
        running = JobRecord.objects.filter(job_type=job_type, status="running").count()
        assert running or job_type == "none", "the test should leave jobs of each type running"
        for limit in (None, 1, 5, 1000):
            assert [j.id for j in store.list_jobs_by_type_sync(job_type, limit)] == every[:limit]


def _index_definition(name: str) -> str:
    catalog = ("SELECT indexdef FROM pg_indexes WHERE indexname = %s"
               if connection.vendor == "postgresql" else
               "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = %s")
    with connection.cursor() as cursor:
        cursor.execute(catalog, [name])
        (indexdef,) = cursor.fetchone()
    return indexdef


def test_the_status_index_leaves_out_the_statuses_every_job_passes_through(store):
    indexdef = _index_definition("portico_job_status")
    assert " WHERE " in indexdef
    for status in JobStatus:
        assert (f"'{status.value}'" in indexdef) is (status.value not in BUSY_STATUSES), indexdef


@pytest.mark.parametrize("name", ["portico_job_queue_status", "portico_job_type"])
def test_the_listing_indexes_leave_out_running_jobs_which_the_lease_index_holds(store, name):
    indexdef = _index_definition(name)
    assert " WHERE " in indexdef and "'running'" in indexdef, indexdef
    assert "'running'" in _index_definition("portico_job_lease")


TRICKY_PAYLOADS = [
    {},
    {"text": "é ü 中文 \u2028 \"quoted\" back\\slash", "emoji": "🚀"},
    {"numbers": [0, -1, 2.5, -3e20, 1e-7, 2**63, -(2**70)], "flags": [True, False, None]},
    {"nested": {"a": {}, "b": [[], [{}], {"c": [1, {"d": "e"}]}]}},
    {"spaces": "  leading and trailing  ", "empty": "", "key with spaces": 1},
]


def test_claimed_jobs_carry_their_payload_and_metadata_exactly(store, job):
    # Claims decode jsonb with a loader of their own (jobs.queue._jsonb_loader).
    stored = store.enqueue_many_sync([job(payload=p, metadata={"i": i} if i % 2 else {})
                                      for i, p in enumerate(TRICKY_PAYLOADS)])
    claimed = {j.id: j for j in store.dequeue_many_sync("default", len(stored))}
    for original in stored:
        assert claimed[original.id].payload == original.payload
        assert claimed[original.id].metadata == original.metadata
    empties = [j.payload for j in claimed.values() if j.payload == {}]
    empties += [j.metadata for j in claimed.values() if j.metadata == {}]
    assert len({id(e) for e in empties}) == len(empties), "each job gets its own empty dict"
    assert len(store.acknowledge_many_sync(list(claimed.values()))) == len(stored)


def test_claims_on_an_event_loop_carry_their_payload_exactly(store, job):
    stored = store.enqueue_many_sync([job(payload=p) for p in TRICKY_PAYLOADS])

    async def claim_all():
        jobs = [await store.dequeue("default", timeout=1) for _ in stored]
        for claimed in jobs:
            await store.acknowledge(claimed.id, {"echo": claimed.payload}, claim=claimed)
        return jobs

    claimed = {j.id: j for j in asyncio.run(claim_all())}
    for original in stored:
        assert claimed[original.id].payload == original.payload
        assert store.get_result_sync(original.id) == {"echo": original.payload}


def test_acknowledge_many_completes_the_claims_that_still_hold(store, job):
    store.enqueue_many_sync([job() for _ in range(5)])
    claimed = store.dequeue_many_sync("default", 5)
    stale = claimed[0]
    store.release_sync(stale.id, claim=stale)
    done = store.acknowledge_many_sync(claimed, [{"n": i} for i in range(5)])
    assert sorted(j.id for j in done) == sorted(j.id for j in claimed[1:])
    assert store.get_result_sync(claimed[1].id) == {"n": 1}
    assert store.get_job_sync(stale.id).status is JobStatus.PENDING
    assert store.counter_drift_sync() == {}


def test_reject_many_applies_the_retry_rules_to_each_claim(store, job):
    store.enqueue_many_sync([job(max_retries=1), job(max_retries=0)])
    claimed = store.dequeue_many_sync("default", 2)
    rejected = store.reject_many_sync(claimed, ["boom", "boom"], delays=[60, None])
    by_retries = {j.max_retries: j for j in rejected}
    assert by_retries[1].status is JobStatus.RETRYING
    assert by_retries[0].status is JobStatus.DEAD_LETTER
    stats = store.get_queue_stats_sync("default")
    assert (stats.retried_total, stats.dead_lettered_total) == (1, 1)


def test_prune_deletes_old_completed_jobs_but_keeps_lifetime_totals(store, job):
    store.enqueue_many_sync([job() for _ in range(12)])
    claimed = store.dequeue_many_sync("default", 10)
    store.acknowledge_many_sync(claimed)
    failed = store.dequeue_sync("default")
    store.reject_sync(failed.id, requeue=False, error_message="nope", claim=failed)
    assert store.prune_sync(older_than=timedelta(hours=1)) == 0
    assert store.prune_sync(older_than=timedelta(0), batch=3) == 10
    stats = store.get_queue_stats_sync("default")
    assert (stats.completed_count, stats.failed_count, stats.pending_count) == (0, 1, 1)
    assert (stats.completed_total, stats.failed_total, stats.enqueued_total) == (10, 1, 12)
    assert store.counter_drift_sync() == {}


def test_compaction_folds_counter_rows_without_changing_any_count(store, job):
    for _ in range(5):
        store.enqueue_many_sync([job() for _ in range(3)])
        for claimed in store.dequeue_many_sync("default", 2):
            store.acknowledge_sync(claimed.id, claim=claimed)
    rows_before = QueueCounter.objects.count()
    store.compact_counters_sync()
    assert QueueCounter.objects.count() < rows_before
    stats = store.get_queue_stats_sync("default")
    assert (stats.pending_count, stats.running_count, stats.completed_count) == (5, 0, 10)
    assert (stats.enqueued_total, stats.completed_total) == (15, 10)


def test_reconcile_reports_no_drift_then_finds_and_fixes_injected_drift(store, job, capsys):
    store.enqueue_many_sync([job() for _ in range(4)])
    call_command("portico_reconcile")
    assert "no drift" in capsys.readouterr().out
    QueueCounter.objects.create(queue_name="default", name="pending", value=3)
    with pytest.raises(CommandError, match="drifted"):
        call_command("portico_reconcile")
    assert "drift=+3" in capsys.readouterr().out
    call_command("portico_reconcile", "--fix")
    assert store.counter_drift_sync() == {}
    assert store.get_queue_stats_sync("default").pending_count == 4


def test_times_are_stored_in_utc(store, job):
    stored = store.enqueue_sync(job())
    record = JobRecord.objects.get(id=stored.id)
    assert record.created_at.utcoffset() == timedelta(0)
    assert stored.created_at == record.created_at


def _test_database_env() -> dict[str, str]:
    """The environment a child process needs to reach this test's database."""
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    else:
        url = f"sqlite:///{db['NAME']}"
    return {**os.environ, "DATABASE_URL": url, "DJANGO_DEBUG": "1"}


def _spawn_claimers(count: int, out_dir: Path) -> list[subprocess.Popen]:
    return [
        subprocess.Popen([sys.executable, str(WORKER_SCRIPT), str(out_dir / f"worker-{n}.json")],
                         env=_test_database_env(), cwd=Path(__file__).resolve().parents[2])
        for n in range(count)
    ]


def test_four_processes_claiming_a_thousand_jobs_complete_each_exactly_once(store, job, tmp_path):
    jobs = store.enqueue_many_sync([job(payload={"i": i}, priority=i % 5) for i in range(1000)])
    workers = _spawn_claimers(4, tmp_path)
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    claimed = []
    for n in range(4):
        claimed += json.loads((tmp_path / f"worker-{n}.json").read_text())
    assert len(claimed) == 1000
    assert sorted(claimed) == sorted(str(j.id) for j in jobs)
    stats = store.get_queue_stats_sync("default")
    assert (stats.completed_count, stats.pending_count, stats.running_count) == (1000, 0, 0)
    assert stats.completed_total == 1000
    assert store.counter_drift_sync() == {}


@pytest.mark.postgres
def test_a_waiting_dequeue_is_woken_by_an_enqueue_from_another_process(job):
    import asyncio

    # A poll interval far longer than the test: only the NOTIFY can wake this dequeue.
    waiting = DatabaseJobQueueAdapter(poll_interval=60)

    async def scenario():
        waiter = asyncio.create_task(waiting.dequeue("default", timeout=30))
        await asyncio.sleep(1.0)  # the listener is connected and the first claim came back empty
        subprocess.run([sys.executable, "-c", ENQUEUE_ONE], check=True, env=_test_database_env(),
                       cwd=Path(__file__).resolve().parents[2])
        enqueued_at = time.monotonic()
        claimed = await asyncio.wait_for(waiter, timeout=30)
        return claimed, time.monotonic() - enqueued_at

    try:
        claimed, woke_after = asyncio.run(scenario())
    finally:
        waiting.close_sync()
    assert claimed is not None and claimed.job_type == "from.another.process"
    assert woke_after < 0.5


ENQUEUE_ONE = """
import django
django.setup()
from uuid import uuid4
from jobs.queue import BUSY_STATUSES, DatabaseJobQueueAdapter
from portico.ports.job import Job
DatabaseJobQueueAdapter().enqueue_sync(
    Job(id=uuid4(), queue_name="default", job_type="from.another.process", payload={}))
"""
