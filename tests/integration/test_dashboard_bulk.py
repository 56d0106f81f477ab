"""Dashboard actions over a filter and the failure groups' upkeep, with real commits (transactional tests)."""
from __future__ import annotations

import re
import threading
import time
from uuid import uuid4

import pytest
from django.db import connection, connections

from jobs import maintenance, operations, queries, services
from jobs.models import AuditEntry, FailureDelta, JobRecord
from portico.ports.job import Job
from tests.integration.test_dashboard import build_job, client_for, user_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queue(empty_store):
    FailureDelta.objects.all().delete()
    return services.job_queue()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_requeue_all_runs_in_the_background_in_batches_while_a_worker_keeps_running(queue, settings):
    settings.PORTICO_BULK_BATCH = 40
    dead = [build_job(queue, "dead_letter", queue_name="bulk", error=f"TimeoutError: {n}") for n in range(200)]
    busy = [Job(id=uuid4(), queue_name="busy", job_type="test.job", payload={}) for _ in range(100)]
    queue.enqueue_many_sync(busy)

    finished: list[str] = []
    stop = threading.Event()

    def worker() -> None:
        # A worker on another queue, with its own connection, claiming while the action runs.
        try:
            while not stop.is_set() and len(finished) < len(busy):
                for claim in queue.dequeue_many_sync("busy", 5):
                    queue.acknowledge_sync(claim.id, {}, claim=claim)
                    finished.append(str(claim.id))
        finally:
            connections.close_all()

    thread = threading.Thread(target=worker)
    thread.start()
    operator = client_for(user_in("operator"))
    try:
        preview = operator.get("/dead-letter/bulk/preview/?action=requeue&status=dead_letter&queue=bulk")
        assert re.search(r"data-count>200<", preview.content.decode())
        started = operator.post("/dead-letter/bulk/", {"action": "requeue", "status": "dead_letter", "queue": "bulk"})
        assert started.status_code == 303
        progress_url = started["Location"]
        assert re.fullmatch(r"/dead-letter/bulk/\d+/", progress_url)

        def finished_page():
            html = operator.get(progress_url, headers={"HX-Request": "true"}).content.decode()
            return html if 'data-state="finished"' in html else None

        html = wait_for(finished_page, 30, "the requeue to finish")
        assert "hx-trigger" not in html  # a finished run stops polling
        assert "<strong data-changed>200</strong>" in html
    finally:
        thread.join(timeout=30)
        stop.set()
    assert len(finished) == 100
    entry = AuditEntry.objects.get(scope="filter")
    assert (entry.requested, entry.changed, entry.refused, entry.error) == (200, 200, 0, "")
    assert entry.finished_at is not None
    assert set(JobRecord.objects.filter(id__in=dead).values_list("status", flat=True)) == {"pending"}
    assert queries.failure_groups(queries.FailureFilter(queue="bulk")).groups == []


def test_a_run_over_a_filter_that_fails_records_where_it_stopped(queue, monkeypatch):
    for _ in range(5):
        build_job(queue, "dead_letter", queue_name="broken")
    entry = operations.start_on_filter("requeue", queries.FailureFilter(queue="broken"), user=None)
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return real(*args, **kwargs)

    real = operations._filter_batch
    monkeypatch.setattr(operations, "_filter_batch", failing)
    with pytest.raises(RuntimeError):
        operations.run_on_filter(entry.pk, batch=2)
    entry.refresh_from_db()
    assert (entry.changed, entry.finished_at is not None) == (2, True)
    assert entry.error == "RuntimeError: database went away" and entry.actor_name == "(system)"
    # Started again, it finishes the rest: only jobs still dead-lettered match.
    monkeypatch.setattr(operations, "_filter_batch", real)
    again = operations.start_on_filter("requeue", queries.FailureFilter(queue="broken"), user=None)
    assert again.requested == 3
    assert operations.run_on_filter(again.pk, batch=2).changed == 3


@pytest.mark.postgres
def test_failure_groups_that_drifted_from_the_counts_are_rebuilt_by_the_maintenance_not_the_page(queue):
    for n in range(3):
        build_job(queue, "dead_letter", queue_name="drift", error=f"E: {n}")
    assert maintenance.failure_drift("dead_letter") == []
    # What a TRUNCATE of the job table, or a write with the triggers off, leaves behind.
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM portico_failure_delta WHERE queue_name = 'drift'")
        cursor.execute("INSERT INTO portico_failure_delta (status, queue_name, job_type, fingerprint, delta) "
                       "VALUES ('dead_letter', 'ghost', 'x', 'gone', 5)")
    assert sorted(maintenance.failure_drift("dead_letter")) == ["drift", "ghost"]
    viewer = client_for(user_in("viewer"))
    assert "ghost" in viewer.get("/dead-letter/").content.decode()  # the page reads what is there
    assert sorted(maintenance.failure_drift("dead_letter")) == ["drift", "ghost"]

    assert maintenance.run("heal") is True
    assert maintenance.failure_drift("dead_letter") == []
    html = viewer.get("/dead-letter/").content.decode()
    assert "E: &lt;n&gt;" in html and "ghost" not in html
    (group,) = queries.failure_groups(queries.FailureFilter()).groups
    assert (group.queue_name, group.count) == ("drift", 3)


@pytest.mark.postgres
def test_compaction_folds_the_group_rows_without_changing_any_group(queue):
    ids = [build_job(queue, "dead_letter", queue_name="fold", error=f"Timeout {n}") for n in range(6)]
    operations.act_on_jobs("requeue", ids[:2], user=None)
    before = queries.failure_groups(queries.FailureFilter()).groups
    assert FailureDelta.objects.count() == 8  # six in, two out
    maintenance.compact_failure_groups()
    assert FailureDelta.objects.count() == 1
    assert queries.failure_groups(queries.FailureFilter()).groups == before
    operations.act_on_jobs("requeue", ids[2:], user=None)
    maintenance.compact_failure_groups()
    assert FailureDelta.objects.count() == 0  # an empty group disappears


@pytest.mark.postgres
def test_the_statement_triggers_keep_every_failure_group_equal_to_the_rows(queue):
    # Batches entering and leaving failure statuses, a change of error inside a status, a
    # retry that fails for good, discards and requeues: after each step the groups summed
    # from the delta rows equal the groups counted from the job rows.
    def expected() -> dict[tuple, int]:
        found: dict[tuple, int] = {}
        for status, queue_name, job_type, error in JobRecord.objects.filter(
                status__in=["failed", "dead_letter"]).values_list("status", "queue_name", "job_type", "error_message"):
            key = (status, queue_name, job_type, queries.fingerprint(error))
            found[key] = found.get(key, 0) + 1
        return found

    def stored() -> dict[tuple, int]:
        found: dict[tuple, int] = {}
        for row in FailureDelta.objects.values_list("status", "queue_name", "job_type", "fingerprint", "delta"):
            found[row[:4]] = found.get(row[:4], 0) + row[4]
        return {key: n for key, n in found.items() if n}

    def check(step: str) -> None:
        assert stored() == expected(), step
        assert maintenance.failure_drift("failed") == [] and maintenance.failure_drift("dead_letter") == [], step

    queue.enqueue_many_sync([Job(id=uuid4(), queue_name="g" + str(n % 2), job_type=f"t{n % 3}",
                                 payload={}, max_retries=n % 2) for n in range(30)])
    claimed = queue.dequeue_many_sync(["g0", "g1"], 30)
    queue.reject_many_sync(claimed[:20], [f"TimeoutError: after {n} s" for n in range(20)])
    check("a batch rejected: dead letters and retries")
    queue.reject_many_sync(claimed[20:25], ["ValueError: bad 1"] * 5, requeue=False)
    check("a batch failed for good")
    retried = queue.dequeue_many_sync(["g0", "g1"], 30)
    queue.reject_many_sync(retried, [f"ConnectionError: {n}" for n in range(len(retried))])
    check("retries dead-lettered")
    dead = list(JobRecord.objects.filter(status="dead_letter").values_list("id", flat=True))
    JobRecord.objects.filter(id__in=dead[:3]).update(error_message="RewrittenError: by hand")
    check("an error changed inside a status")
    operations.act_on_jobs("discard", dead[3:6], user=None)
    check("dead letters discarded")
    operations.act_on_jobs("requeue", dead[6:9], user=None)
    check("dead letters requeued")
