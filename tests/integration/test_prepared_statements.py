"""PORTICO_PREPARED_STATEMENTS: the hot statements prepared on the server, or none at all."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test import override_settings

from jobs.queue import DatabaseJobQueueAdapter

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


def prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def run_hot_paths(job) -> DatabaseJobQueueAdapter:
    connection.close()  # a fresh session: nothing prepared yet
    store = DatabaseJobQueueAdapter()
    store.enqueue_sync(job())
    store.enqueue_many_sync([job(), job()])
    claimed = store.dequeue_many_sync("default", 3)
    assert len(store.acknowledge_many_sync(claimed)) == 3
    return store


def test_by_default_claims_acknowledgements_and_single_enqueues_are_prepared(empty_store, job):
    store = run_hot_paths(job)
    statements = prepared()
    assert any(s.startswith("INSERT INTO portico_job") for s in statements)
    assert any("FOR UPDATE SKIP LOCKED" in s for s in statements)
    assert any("status = 'completed'" in s for s in statements), statements
    # Django's own queries stay unprepared.
    store.get_queue_stats_sync("default")
    assert not any("portico_queue_counter" in s for s in prepared())
    store.close_sync()


@override_settings(PORTICO_PREPARED_STATEMENTS=False)
def test_turned_off_nothing_is_prepared_for_poolers_without_prepared_statements(empty_store, job):
    store = run_hot_paths(job)
    assert prepared() == []
    assert store.get_queue_stats_sync("default").completed_count == 3
    store.close_sync()


def test_a_savepoint_rollback_does_not_break_the_next_enqueue(empty_store, job):
    """psycopg answers ROLLBACK TO SAVEPOINT with DEALLOCATE ALL once it has prepared statements."""
    from django.db import transaction

    from portico.exceptions import DuplicateJobError

    store = run_hot_paths(job)  # psycopg has prepared the claim and acknowledgement
    first = job()
    with transaction.atomic():
        store.enqueue_sync(first)
        with pytest.raises(DuplicateJobError), transaction.atomic():
            store.enqueue_sync(job(id=first.id))
        store.enqueue_sync(job())
    store.enqueue_sync(job())  # outside a transaction again: prepared anew
    assert store.get_queue_stats_sync("default").pending_count == 3
    store.close_sync()
