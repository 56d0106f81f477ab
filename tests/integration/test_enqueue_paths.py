"""Enqueue on PostgreSQL, field by field: one job is one prepared statement, several one binary COPY."""
from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import psycopg
import pytest
from django.db import connection, transaction
from django.test import override_settings

from jobs.models import JobRecord
from portico.exceptions import DuplicateJobError
from portico.ports.job import Job, JobStatus

pytestmark = pytest.mark.django_db(transaction=True)

dispatched: list[list[str]] = []


def record_dispatch(names: list[str]) -> None:
    """PORTICO_DISPATCH for these tests: remember which queues were rung."""
    dispatched.append(names)


@pytest.fixture
def rich_job(job):
    """Jobs whose every field differs from the default, with JSON that needs escaping."""

    def build(i: int, **fields) -> Job:
        values = {
            "queue_name": "mail",
            "job_type": "mail.send",
            "payload": {
                "i": i, "to": "zoë@example.com", "quote": 'say "hi" \\ bye', "lines": "a\nb\tc",
                "nested": {"list": [1, 2.5, None, True, "\u2603"], "big": 2**62, "empty": {}},
            },
            "metadata": {"trace": f"t-{i}", "tags": ["a", "b"]},
            "priority": -7 + i,
            "max_retries": 9,
            "retry_count": 2,
            "created_by": uuid4(),
            "scheduled_at": datetime.now(timezone(timedelta(hours=5, minutes=30))) + timedelta(hours=1),
        }
        values.update(fields)
        return job(**values)

    return build


PLAIN = {"scheduled_at": None, "created_by": None, "metadata": {}}


@pytest.mark.parametrize(
    "shapes", [[{}], [PLAIN], [{}, PLAIN, {}]], ids=["one-scheduled", "one-plain", "several"])
@pytest.mark.parametrize("in_transaction", [False, True], ids=["alone", "in-transaction"])
def test_every_field_an_enqueue_is_given_is_stored_and_returned_as_the_database_holds_it(
    store, rich_job, shapes, in_transaction
):
    given = [rich_job(i, **shape) for i, shape in enumerate(shapes)]
    with transaction.atomic() if in_transaction else contextlib.nullcontext():
        stored = store.enqueue_many_sync(given)
    assert [job.id for job in stored] == [job.id for job in given]
    for original, returned in zip(given, stored, strict=True):
        assert store.get_job_sync(original.id) == returned
        for field in ("queue_name", "job_type", "payload", "metadata", "priority", "max_retries",
                      "retry_count", "created_by", "scheduled_at"):
            assert getattr(returned, field) == getattr(original, field), field
        assert returned.status is (JobStatus.SCHEDULED if original.scheduled_at else JobStatus.PENDING)
        assert returned.created_at.utcoffset() == timedelta(0)
        assert abs(returned.created_at - datetime.now(UTC)) < timedelta(seconds=30)
    assert len({job.created_at for job in stored}) == 1  # one statement, one database clock reading
    assert store.counter_drift_sync() == {}


def test_a_bulk_enqueue_notifies_each_queue_with_due_jobs_once_and_counts_every_job(store, job):
    connection.ensure_connection()
    with psycopg.connect(connection.connection.info.dsn, autocommit=True) as listener:
        listener.execute("LISTEN portico_jobs")
        store.enqueue_many_sync(
            [job(queue_name="a") for _ in range(3)]
            + [job(queue_name="b", scheduled_at=datetime.now(UTC) - timedelta(seconds=1))]
            + [job(queue_name="later", scheduled_at=datetime.now(UTC) + timedelta(hours=1))]
        )
        heard = sorted(note.payload for note in listener.notifies(timeout=1.0))
    assert heard == ["a", "b"]
    counts = {stats.queue_name: stats for stats in store.get_all_queue_stats_sync()}
    assert (counts["a"].pending_count, counts["a"].enqueued_total) == (3, 3)
    assert (counts["b"].scheduled_count, counts["later"].scheduled_count) == (1, 1)
    assert store.counter_drift_sync() == {}


def test_a_duplicate_in_a_bulk_enqueue_inside_a_transaction_leaves_the_transaction_usable(store, job):
    first = job()
    with transaction.atomic():
        store.enqueue_sync(first)
        with pytest.raises(DuplicateJobError, match=str(first.id)):
            store.enqueue_many_sync([job(), job(id=first.id), job()])
        store.enqueue_many_sync([job(), job()])
    assert JobRecord.objects.count() == 3
    assert store.counter_drift_sync() == {}


def test_a_single_enqueue_prepares_its_statement_again_when_the_connection_dropped_it(store, job):
    store.enqueue_sync(job())
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    again = store.enqueue_sync(job())
    assert store.get_job_sync(again.id) == again
    with pytest.raises(DuplicateJobError, match=str(again.id)):
        store.enqueue_sync(job(id=again.id))
    assert JobRecord.objects.count() == 2


@pytest.mark.parametrize("count", [1, 3], ids=["one", "several"])
def test_the_dispatcher_hears_of_due_queues_after_commit_and_never_after_a_rollback(store, job, count):
    class Abort(Exception):
        pass

    later = datetime.now(UTC) + timedelta(hours=1)
    dispatched.clear()
    with override_settings(PORTICO_DISPATCH=f"{__name__}.record_dispatch"):
        with pytest.raises(Abort), transaction.atomic():
            store.enqueue_many_sync([job(queue_name="gone") for _ in range(count)])
            raise Abort
        assert dispatched == []
        with transaction.atomic():
            store.enqueue_many_sync([job(queue_name=f"q{i}") for i in range(count)]
                                    + [job(queue_name="later", scheduled_at=later)])
            assert dispatched == []
        assert dispatched == [[f"q{i}" for i in range(count)]]
        store.enqueue_many_sync([job(queue_name="alone") for _ in range(count)])
        assert dispatched[-1] == ["alone"]
