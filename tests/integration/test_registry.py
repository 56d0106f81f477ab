"""jobs.registry: handlers from PORTICO_HANDLERS and @job_handler, and plain functions as handlers."""
from __future__ import annotations

from uuid import uuid4

import pytest
from django.db import connection
from django.test import override_settings

from jobs.registry import CallableHandler, get_handlers, job_handler
from portico.ports.job import Job, JobResult
from tests.support import handlers as support


def new_job(job_type: str, queue_name: str = "default") -> Job:
    return Job(id=uuid4(), queue_name=queue_name, job_type=job_type, payload={})


@override_settings(PORTICO_HANDLERS=[
    "tests.support.handlers.RecordHandler",
    "tests.support.handlers.noop_handler",
    "tests.support.handlers.count_queue_jobs",
])
def test_settings_may_name_a_handler_class_an_instance_or_a_decorated_function():
    handlers = get_handlers()
    assert isinstance(handlers["test.record"], support.RecordHandler)
    assert handlers["test.noop"] is support.noop_handler
    orm = handlers["test.orm"]
    assert isinstance(orm, CallableHandler) and orm.function is support.count_queue_jobs


@override_settings(PORTICO_HANDLERS=[])
def test_a_decorated_function_is_registered_without_being_listed_in_settings():
    assert isinstance(get_handlers()["test.orm"], CallableHandler)


@pytest.mark.parametrize("entry", [
    "tests.support.handlers.record_execution",  # a plain function, not decorated
    "portico.ports.job.Job",  # a class that is not a JobHandler
])
def test_an_entry_that_is_not_a_handler_is_refused_with_a_clear_type_error(entry):
    with override_settings(PORTICO_HANDLERS=[entry]), \
            pytest.raises(TypeError, match="PORTICO_HANDLERS entry") as raised:
        get_handlers()
    assert entry in str(raised.value)
    assert "@job_handler" in str(raised.value)


def test_two_entries_for_the_same_job_type_are_refused():
    handlers = ["tests.support.handlers.NoopHandler", "tests.support.handlers.noop_handler"]
    with override_settings(PORTICO_HANDLERS=handlers), pytest.raises(ValueError, match="test.noop"):
        get_handlers()


def test_decorating_a_second_function_for_a_registered_job_type_is_refused():
    with pytest.raises(ValueError, match="test.orm"):
        @job_handler("test.orm")
        def impostor(job: Job) -> None:
            return None

    with override_settings(PORTICO_HANDLERS=[]):
        assert get_handlers()["test.orm"].function is support.count_queue_jobs


@pytest.fixture
def executions_table(empty_store) -> None:
    with connection.cursor() as cursor:
        cursor.execute(support.EXECUTIONS_TABLE)


@pytest.mark.django_db(transaction=True)
async def test_a_synchronous_function_runs_on_a_thread_with_working_database_access(executions_table):
    def count_then_close(job: Job) -> dict:
        try:
            return support.count_queue_jobs(job)
        finally:
            connection.close()  # the worker keeps it; the test database must not see it linger

    handler = CallableHandler("test.orm", count_then_close)
    result = await handler.handle(new_job("test.orm", "nowhere"))
    assert result == JobResult(success=True, result_data={"jobs_in_queue": 0})


async def test_a_function_may_return_a_job_result_a_dict_or_none_and_nothing_else():
    def returning(value):
        return CallableHandler("returns", lambda job: value)

    failed = JobResult(success=False, error=ValueError("bad"))
    assert await returning(failed).handle(new_job("returns")) is failed
    assert await returning({"n": 1}).handle(new_job("returns")) == JobResult(True, result_data={"n": 1})
    assert await returning(None).handle(new_job("returns")) == JobResult(success=True)
    with pytest.raises(TypeError, match="str"):
        await returning("done").handle(new_job("returns"))
