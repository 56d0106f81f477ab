"""JobService: creates jobs of registered types through the queue port, and refuses bad ones whole."""
from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from portico.adapters.job_queue.memory_queue import MemoryJobQueueAdapter
from portico.exceptions import InvalidJobStateError
from portico.kits.job import JobService
from portico.ports.job import Job, JobResult, JobStatus
from portico.ports.job_creator import JobCreator
from portico.ports.job_handler import JobHandler


class EchoHandler(JobHandler):
    def __init__(self, job_type: str) -> None:
        self._job_type = job_type

    @property
    def job_type(self) -> str:
        return self._job_type

    async def handle(self, job: Job) -> JobResult:
        return JobResult(success=True, result_data=dict(job.payload))


@pytest.fixture
def queue() -> MemoryJobQueueAdapter:
    return MemoryJobQueueAdapter()


@pytest.fixture
def service(queue: MemoryJobQueueAdapter) -> JobService:
    return JobService(queue, handlers=[EchoHandler("email.send"), EchoHandler("report.generate")])


@pytest.fixture
def nothing_stored(queue: MemoryJobQueueAdapter) -> Callable[[], Any]:
    """An async check that the queue holds no job at all, by every reading the port offers."""

    async def check() -> None:
        for job_type in ("email.send", "report.generate", "unknown.type"):
            assert await queue.list_jobs_by_type(job_type) == []
        for status in JobStatus:
            assert await queue.list_jobs_by_status(status) == []
        stats = await queue.get_queue_stats("default")
        assert stats.pending_count == stats.scheduled_count == stats.enqueued_total == 0
        assert await queue.get_all_queue_stats() == []

    return check


def test_the_service_is_a_job_creator(service: JobService) -> None:
    assert isinstance(service, JobCreator)


async def test_create_job_stores_and_returns_a_pending_job_with_created_at(
    service: JobService, queue: MemoryJobQueueAdapter
) -> None:
    before = datetime.now(UTC)
    job = await service.create_job("email.send", {"recipient": "user@example.com"})

    assert isinstance(job.id, UUID)
    assert job.status is JobStatus.PENDING
    assert job.job_type == "email.send"
    assert job.queue_name == "default"
    assert job.priority == 0
    assert job.payload == {"recipient": "user@example.com"}
    assert job.created_at is not None and before <= job.created_at <= datetime.now(UTC)
    assert job.created_at.tzinfo is not None
    assert await queue.get_job(job.id) == job
    assert (await queue.get_queue_stats("default")).pending_count == 1


async def test_create_job_honours_queue_name_and_priority(
    service: JobService, queue: MemoryJobQueueAdapter
) -> None:
    job = await service.create_job("email.send", {}, queue_name="emails", priority=7)
    stored = await queue.get_job(job.id)
    assert (stored.queue_name, stored.priority) == ("emails", 7)


async def test_create_job_honours_max_retries_created_by_and_metadata(
    service: JobService, queue: MemoryJobQueueAdapter
) -> None:
    user = uuid4()
    job = await service.create_job(
        "report.generate",
        {"report_type": "sales"},
        max_retries=5,
        created_by=user,
        metadata={"tenant_id": "t1", "tags": ["monthly"]},
    )
    stored = await queue.get_job(job.id)
    assert stored.max_retries == 5
    assert stored.created_by == user
    assert stored.metadata == {"tenant_id": "t1", "tags": ["monthly"]}
    assert stored.retry_count == 0


async def test_create_job_with_scheduled_at_stores_a_scheduled_job(
    service: JobService, queue: MemoryJobQueueAdapter
) -> None:
    when = datetime.now(UTC) + timedelta(hours=1)
    job = await service.create_job("email.send", {}, scheduled_at=when)
    assert job.status is JobStatus.SCHEDULED
    assert job.scheduled_at == when
    stored = await queue.get_job(job.id)
    assert stored.status is JobStatus.SCHEDULED
    assert (await queue.get_queue_stats("default")).scheduled_count == 1
    assert await queue.dequeue("default", timeout=0) is None


async def test_create_job_accepts_an_aware_scheduled_at_in_any_zone(service: JobService) -> None:
    from datetime import timezone

    plus_two = timezone(timedelta(hours=2))
    when = datetime.now(plus_two) + timedelta(minutes=5)
    job = await service.create_job("email.send", {}, scheduled_at=when)
    assert job.scheduled_at == when
    assert job.scheduled_at.utcoffset() == timedelta(0)


async def test_create_job_gives_each_job_its_own_id(service: JobService) -> None:
    ids = {(await service.create_job("email.send", {"n": n})).id for n in range(20)}
    assert len(ids) == 20


async def test_an_unregistered_job_type_is_refused_by_name_and_nothing_is_stored(
    service: JobService, nothing_stored: Callable[[], Any]
) -> None:
    with pytest.raises(ValueError, match="unknown.type"):
        await service.create_job("unknown.type", {"n": 1})
    await nothing_stored()


async def test_job_types_can_be_registered_without_handlers(queue: MemoryJobQueueAdapter) -> None:
    service = JobService(queue, job_types=["webhook.send"])
    job = await service.create_job("webhook.send", {})
    assert job.job_type == "webhook.send"
    with pytest.raises(ValueError, match="email.send"):
        await service.create_job("email.send", {})


@pytest.mark.parametrize(
    ("payload", "offending_key"),
    [
        ({"ok": 1, "user_id": uuid4()}, "user_id"),
        ({"ok": 1, "when": datetime.now(UTC)}, "when"),
        ({"ok": 1, "tags": {"a", "b"}}, "tags"),
        ({"ok": 1, "ratio": math.nan}, "ratio"),
        ({"ok": 1, "ratio": math.inf}, "ratio"),
        ({"ok": 1, 42: "non-str key"}, "42"),
        ({"ok": 1, "nested": {"deep": [1, {"blob": b"bytes"}]}}, "blob"),
    ],
    ids=["uuid", "datetime", "set", "nan", "inf", "non-str-key", "nested-bytes"],
)
async def test_a_payload_that_is_not_json_is_refused_naming_the_key_and_nothing_is_stored(
    service: JobService,
    nothing_stored: Callable[[], Any],
    payload: dict[Any, Any],
    offending_key: str,
) -> None:
    with pytest.raises(ValueError, match=offending_key):
        await service.create_job("email.send", payload)
    await nothing_stored()


async def test_metadata_that_is_not_json_is_refused_and_nothing_is_stored(
    service: JobService, nothing_stored: Callable[[], Any]
) -> None:
    with pytest.raises(ValueError, match="trace_id"):
        await service.create_job("email.send", {}, metadata={"trace_id": uuid4()})
    await nothing_stored()


async def test_a_payload_that_is_not_a_dict_is_refused(
    service: JobService, nothing_stored: Callable[[], Any]
) -> None:
    with pytest.raises(ValueError, match="payload"):
        await service.create_job("email.send", ["not", "a", "dict"])  # type: ignore[arg-type]
    await nothing_stored()


async def test_a_naive_scheduled_at_is_refused_and_nothing_is_stored(
    service: JobService, nothing_stored: Callable[[], Any]
) -> None:
    naive = datetime.now() + timedelta(hours=1)
    with pytest.raises(ValueError, match="scheduled_at"):
        await service.create_job("email.send", {}, scheduled_at=naive)
    await nothing_stored()


async def test_an_oversized_payload_is_refused_and_nothing_is_stored(
    service: JobService, nothing_stored: Callable[[], Any]
) -> None:
    with pytest.raises(ValueError, match="bytes"):
        await service.create_job("email.send", {"blob": "x" * (300 * 1024)})
    await nothing_stored()


async def test_the_payload_limit_follows_the_adapter_setting() -> None:
    queue = MemoryJobQueueAdapter(max_payload_bytes=100)
    service = JobService(queue, handlers=[EchoHandler("email.send")])
    await service.create_job("email.send", {"blob": "x" * 50})
    with pytest.raises(ValueError, match="over the limit of 100"):
        await service.create_job("email.send", {"blob": "x" * 200})
    assert len(await queue.list_jobs_by_type("email.send")) == 1


async def test_an_unknown_option_is_a_type_error_and_nothing_is_stored(
    service: JobService, nothing_stored: Callable[[], Any]
) -> None:
    with pytest.raises(TypeError, match="retries"):
        await service.create_job("email.send", {}, retries=5)
    await nothing_stored()


async def test_get_job_passes_through_to_the_queue(
    service: JobService, queue: MemoryJobQueueAdapter
) -> None:
    job = await service.create_job("email.send", {"n": 1})
    assert await service.get_job(job.id) == await queue.get_job(job.id)
    assert await service.get_job(uuid4()) is None


async def test_cancel_job_passes_through_to_the_queue(
    service: JobService, queue: MemoryJobQueueAdapter
) -> None:
    waiting = await service.create_job("email.send", {"n": 1})
    running = await service.create_job("email.send", {"n": 2})
    assert (await queue.dequeue("default", timeout=0)).id == waiting.id  # oldest first

    assert await service.cancel_job(running.id) is True
    cancelled = await queue.get_job(running.id)
    assert cancelled.status is JobStatus.FAILED
    assert cancelled.error_message == "Job cancelled"
    assert await service.cancel_job(waiting.id) is False
    assert await service.cancel_job(uuid4()) is False


async def test_get_queue_stats_passes_through_to_the_queue() -> None:
    now = datetime.now(UTC)
    queue = MemoryJobQueueAdapter(clock=lambda: now)  # still time: latency compares equal
    service = JobService(queue, handlers=[EchoHandler("email.send")])
    await service.create_job("email.send", {})
    await service.create_job("email.send", {}, queue_name="emails")
    await service.create_job("email.send", {}, queue_name="emails")
    assert await service.get_queue_stats() == await queue.get_queue_stats("default")
    stats = await service.get_queue_stats("emails")
    assert stats == await queue.get_queue_stats("emails")
    assert stats.queue_name == "emails" and stats.pending_count == 2


async def test_requeue_job_passes_through_to_the_queue(
    service: JobService, queue: MemoryJobQueueAdapter
) -> None:
    job = await service.create_job("email.send", {}, max_retries=0)
    await queue.dequeue("default", timeout=0)
    dead = await queue.reject(job.id, requeue=True, error_message="boom")
    assert dead.status is JobStatus.DEAD_LETTER

    back = await service.requeue_job(job.id)
    assert back.status is JobStatus.PENDING
    assert back.retry_count == 0
    assert await queue.get_job(job.id) == back


async def test_requeue_of_a_pending_job_is_refused(service: JobService) -> None:
    job = await service.create_job("email.send", {})
    with pytest.raises(InvalidJobStateError, match="pending"):
        await service.requeue_job(job.id)
    assert (await service.get_job(job.id)).status is JobStatus.PENDING
