"""How the project configures Celery for doorbells: acknowledgement, routing, beat, PORTICO_DISPATCH."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs import dispatch
from jobs.queue import DatabaseJobQueueAdapter
from portico_site.celery import app, beat_schedule
from tests.integration.celery_harness import make_jobs

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_doorbells_are_acknowledged_after_their_task_and_taken_one_at_a_time() -> None:
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_ignore_result is True


def test_a_doorbell_goes_to_its_queues_celery_queue_and_upkeep_to_the_maintenance_queue() -> None:
    route = app.amqp.router.route
    assert route({}, dispatch.RUN_QUEUE, ("emails",), {})["queue"].name == "portico.emails"
    assert route({}, dispatch.RUN_QUEUE, (), {"queue_name": "reports"})["queue"].name == "portico.reports"
    for task in (dispatch.SWEEP, dispatch.RESCUE, dispatch.PRUNE, dispatch.COMPACT_COUNTERS,
                 dispatch.HEAL_FAILURE_GROUPS, dispatch.RECORD_SAMPLES):
        assert route({}, task, (), {})["queue"].name == "portico.maintenance"
    # A team's own tasks keep Celery's default queue.
    assert route({}, "myapp.send_invoice", (), {})["queue"].name == "celery"


def test_beat_sends_the_sweep_and_every_maintenance_task_at_the_configured_intervals(settings) -> None:
    settings.PORTICO_SWEEP_INTERVAL = 0.25
    settings.PORTICO_RESCUE_INTERVAL = 7.0
    settings.PORTICO_SAMPLE_INTERVAL = 3.0
    schedule = beat_schedule()
    by_task = {entry["task"]: entry for entry in schedule.values()}
    assert set(by_task) == {dispatch.SWEEP, dispatch.RESCUE, dispatch.PRUNE, dispatch.COMPACT_COUNTERS,
                            dispatch.HEAL_FAILURE_GROUPS, dispatch.RECORD_SAMPLES}
    assert by_task[dispatch.SWEEP]["schedule"] == 0.25
    assert by_task[dispatch.RESCUE]["schedule"] == 7.0
    assert by_task[dispatch.RECORD_SAMPLES]["schedule"] == 3.0
    for entry in schedule.values():
        # Expiring, never delayed: no ETA or countdown for the broker to hold back.
        assert entry["options"] == {"expires": entry["schedule"]}
    assert set(app.conf.beat_schedule) == set(schedule)


@pytest.mark.parametrize(("value", "dispatcher"), [
    (None, "None"), ("", "None"), ("celery", "jobs.dispatch.ring"), (" Celery ", "jobs.dispatch.ring"),
])
def test_portico_dispatch_celery_rings_doorbells_and_unset_sends_none(value, dispatcher) -> None:
    result = _load_settings(value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == dispatcher


def test_an_unknown_portico_dispatch_refuses_to_start() -> None:
    result = _load_settings("rq")
    assert result.returncode != 0
    assert "PORTICO_DISPATCH must be 'celery' or unset" in result.stderr


def _load_settings(dispatch_value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "PORTICO_", "CELERY_", "DATABASE_URL"))}
    env["DJANGO_DEBUG"] = "1"
    if dispatch_value is not None:
        env["PORTICO_DISPATCH"] = dispatch_value
    return subprocess.run(
        [sys.executable, "-c", "from portico_site import settings; print(settings.PORTICO_DISPATCH)"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.django_db(transaction=True)
def test_the_sweep_finds_exactly_the_queues_with_a_waiting_job_that_is_due(empty_store) -> None:
    store = DatabaseJobQueueAdapter()
    later = datetime.now(UTC) + timedelta(hours=1)
    store.enqueue_many_sync(
        make_jobs(queue_name="due")
        + make_jobs(queue_name="scheduled_later", scheduled_at=later)
        + make_jobs(queue_name="due_now", scheduled_at=datetime.now(UTC) - timedelta(seconds=1))
        + make_jobs(queue_name="running") + make_jobs(queue_name="done")
    )
    store.dequeue_sync("running")
    store.acknowledge_sync(store.dequeue_sync("done").id)
    retried = store.enqueue_sync(make_jobs(queue_name="retrying")[0])
    store.reject_sync(store.dequeue_sync("retrying").id, error_message="again", delay=3600)
    assert store.get_job_sync(retried.id).status.value == "retrying"

    assert store.due_queue_names_sync() == ["due", "due_now"]
