"""The demo: handlers of the demo job types, a store seeded in every job state, and live traffic.

``manage.py portico_demo`` drives it; ``make run`` (scripts/run.sh) runs it with the built-in
worker and the web server. Every job state is reached through the queue's own operations
(enqueue, claim, acknowledge, reject, cancel), never by writing rows, so the demo data is
exactly what real workers would have left behind. The handlers are registered when the
environment has ``PORTICO_DEMO=1`` (see ``portico_site/settings.py``).
"""
from __future__ import annotations

import asyncio
import logging
import random
import secrets
import threading
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from django.db import DatabaseError, connections, transaction

from jobs.queue import DatabaseJobQueueAdapter
from portico.exceptions import InvalidJobStateError, PorticoError
from portico.kits.job.worker import describe
from portico.ports.job import Job, JobResult, JobStatus
from portico.ports.job_handler import JobHandler

log = logging.getLogger("portico.demo")

DEMO_USERNAME = "demo"
# Waiting jobs a queue may hold before live traffic stops adding to it: with no worker
# running, the generator would otherwise grow the store without end.
LIVE_BACKLOG_LIMIT = 500

_FIRST_NAMES = ("ada", "grace", "linus", "margaret", "alan", "barbara", "ken", "radia",
                "edsger", "frances", "dennis", "hedy", "john", "katherine", "tim")
_DOMAINS = ("example.com", "example.org", "example.net")


class DemoError(PorticoError):
    """The demo could not be seeded."""


class RecipientRefused(Exception):
    """The mail server refused the recipient for good."""


class HTTPError(Exception):
    """The webhook endpoint answered with an error status."""


@dataclass(frozen=True)
class Failure:
    """One way a demo job fails: the error, how often, whether it is worth retrying.

    ``when`` limits the failure to some payloads (a partner endpoint that is down fails every
    delivery to it); ``rate`` is the chance among those payloads.
    """

    error: Callable[[dict[str, Any]], Exception]
    rate: float
    retry: bool = True
    when: Callable[[dict[str, Any]], bool] = lambda payload: True

    def message(self, payload: dict[str, Any]) -> str:
        """The error as a worker records it, so seeded and live failures group together."""
        return describe(self.error(payload))


class DemoHandler(JobHandler):
    """A demo job type: takes a while, then succeeds or fails in one of its known ways.

    A failure worth retrying is raised, as real handler code does; one that is not is
    returned as a failed result with ``retry_recommended: False``, so it ends ``failed``
    at once instead of going round the retries into dead letter.
    """

    job_type = ""
    queue_name = "default"
    max_retries = 3
    duration: tuple[float, float] = (0.05, 0.3)
    failures: tuple[Failure, ...] = ()

    def __init__(self) -> None:
        self.rng = random.Random()

    @abstractmethod
    def payload(self, rng: random.Random) -> dict[str, Any]:
        """A plausible payload for a new job of this type."""

    @abstractmethod
    def result(self, payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """The result data of a successful run."""

    def failure(self, payload: dict[str, Any], roll: float) -> Failure | None:
        """The failure a run with this payload meets for a roll in [0, 1), or None."""
        threshold = 0.0
        for failure in self.failures:
            if failure.when(payload):
                threshold += failure.rate
                if roll < threshold:
                    return failure
        return None

    async def handle(self, job: Job) -> JobResult:
        await asyncio.sleep(self.rng.uniform(*self.duration))
        failure = self.failure(job.payload, self.rng.random())
        if failure is None:
            return JobResult(success=True, result_data=self.result(job.payload, self.rng))
        error = failure.error(job.payload)
        if failure.retry:
            raise error
        return JobResult(success=False, error=error, result_data={"retry_recommended": False})


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST_NAMES)}.{rng.randint(1, 999)}@{rng.choice(_DOMAINS)}"


class ResizeImage(DemoHandler):
    """Fast: thumbnails of an uploaded image."""

    job_type = "demo.image.resize"
    queue_name = "default"
    duration = (0.05, 0.4)
    failures = (
        Failure(lambda p: TimeoutError("object storage read timed out after 10s"), 0.02),
        Failure(lambda p: ConnectionError("image CDN origin cdn-origin-3.internal:443 unreachable"), 0.01),
        Failure(lambda p: OSError(f"cannot identify image file {p['path']!r}"), 0.02, retry=False),
    )

    def payload(self, rng: random.Random) -> dict[str, Any]:
        image = rng.randint(1000, 99999)
        extension = rng.choice(("jpg", "jpg", "png", "heic"))
        return {"image_id": image, "path": f"uploads/2024/IMG_{image}.{extension}",
                "sizes": [160, 640, 1280]}

    def result(self, payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        return {"thumbnails": [f"{payload['path']}@{size}w.webp" for size in payload["sizes"]],
                "bytes_written": rng.randint(40_000, 900_000)}


class SendEmail(DemoHandler):
    """Fast: one transactional email."""

    job_type = "demo.email.send"
    queue_name = "emails"
    max_retries = 4
    duration = (0.02, 0.2)
    failures = (
        Failure(lambda p: ConnectionError("SMTP server unavailable"), 0.04),
        Failure(lambda p: TimeoutError("SMTP server did not answer EHLO within 30s"), 0.02),
        Failure(lambda p: RecipientRefused(f"550 5.1.1 <{p['to']}>: mailbox unavailable"), 0.02,
                retry=False),
    )

    def payload(self, rng: random.Random) -> dict[str, Any]:
        return {"to": _person(rng),
                "template": rng.choice(("welcome", "password_reset", "receipt", "weekly_digest")),
                "locale": rng.choice(("en", "en", "de", "fr"))}

    def result(self, payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        return {"message_id": f"<{secrets.token_hex(8)}@mail.example.com>", "accepted": [payload["to"]]}


class GenerateReport(DemoHandler):
    """Slow: one to five seconds of number crunching."""

    job_type = "demo.report.generate"
    queue_name = "reports"
    max_retries = 1
    duration = (1.0, 5.0)
    failures = (
        Failure(lambda p: TimeoutError("report query exceeded the 30s statement timeout"), 0.04),
        Failure(lambda p: MemoryError(f"rendering the {p['period']} report needs more than 2 GiB"), 0.01),
        Failure(lambda p: ValueError(f"no data for period {p['period']}"), 0.02, retry=False),
    )

    def payload(self, rng: random.Random) -> dict[str, Any]:
        return {"report": rng.choice(("monthly_revenue", "churn_by_cohort", "inventory_snapshot")),
                "period": f"2024-{rng.randint(1, 12):02d}", "format": rng.choice(("pdf", "csv")),
                "requested_by": _person(rng)}

    def result(self, payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        return {"rows": rng.randint(1_000, 250_000),
                "url": f"s3://portico-reports/{payload['report']}/{payload['period']}.{payload['format']}"}


class ChargePayment(DemoHandler):
    """Fails about one run in five: a bad card (not retried) or a flaky payment gateway."""

    job_type = "demo.payment.charge"
    queue_name = "payments"
    duration = (0.1, 0.6)
    failures = (
        Failure(lambda p: ValueError(f"invalid card number 4111-xxxx-xxxx-{p['card_last4']}"), 0.08,
                retry=False),
        Failure(lambda p: TimeoutError("upstream API timed out after 30s"), 0.07),
        Failure(lambda p: ConnectionError("payment gateway connection reset by peer"), 0.05),
    )

    def payload(self, rng: random.Random) -> dict[str, Any]:
        return {"order_id": f"ord_{rng.randint(100000, 999999)}",
                "amount_cents": rng.choice((499, 1299, 2500, 4999, 12900, 35000)),
                "currency": rng.choice(("EUR", "USD", "GBP")),
                "card_last4": f"{rng.randint(0, 9999):04d}",
                # Shown masked by the dashboard (PORTICO_REDACT_KEYS).
                "card_token": f"tok_{secrets.token_hex(12)}",
                "customer": _person(rng)}

    def result(self, payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        return {"charge_id": f"ch_{secrets.token_hex(10)}", "amount_cents": payload["amount_cents"],
                "currency": payload["currency"]}


# A partner whose endpoint is down for the whole demo: every delivery to it ends in dead letter.
DOWN_ENDPOINT = "https://hooks.acme-logistics.example/portico/orders"
_ENDPOINTS = (
    "https://hooks.example.com/orders",
    "https://crm.example.org/webhooks/portico",
    "https://api.example.net/v2/events",
    DOWN_ENDPOINT,
)


class DeliverWebhook(DemoHandler):
    """Fast, unless the endpoint is down: one partner's always is."""

    job_type = "demo.webhook.deliver"
    queue_name = "webhooks"
    max_retries = 2
    duration = (0.05, 0.5)
    failures = (
        Failure(lambda p: ConnectionError(f"POST {p['endpoint']} failed: connection refused"), 1.0,
                when=lambda p: p["endpoint"] == DOWN_ENDPOINT),
        Failure(lambda p: HTTPError("503 Service Unavailable: the receiver is overloaded"), 0.05),
        Failure(lambda p: HTTPError(f"410 Gone from {p['endpoint']}: the subscription was deleted"), 0.02,
                retry=False),
    )

    def payload(self, rng: random.Random) -> dict[str, Any]:
        # The down partner gets few deliveries, so dead letters grow slowly.
        endpoint = DOWN_ENDPOINT if rng.random() < 0.06 else rng.choice(_ENDPOINTS[:-1])
        return {"endpoint": endpoint,
                "event": rng.choice(("order.paid", "order.shipped", "customer.updated")),
                "delivery_id": f"dlv_{secrets.token_hex(8)}",
                # Shown masked by the dashboard (PORTICO_REDACT_KEYS).
                "headers": {"Authorization": f"Bearer whsec_{secrets.token_hex(12)}"}}

    def result(self, payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        return {"status": 200, "elapsed_ms": rng.randint(30, 900)}


HANDLERS: tuple[type[DemoHandler], ...] = (ResizeImage, SendEmail, GenerateReport, ChargePayment,
                                           DeliverWebhook)
# The dotted paths settings put in PORTICO_HANDLERS when PORTICO_DEMO=1.
HANDLER_PATHS = tuple(f"{handler.__module__}.{handler.__qualname__}" for handler in HANDLERS)
QUEUES = tuple(handler.queue_name for handler in HANDLERS)
JOB_TYPES = tuple(handler.job_type for handler in HANDLERS)


def _new_job(handler: DemoHandler, rng: random.Random, payload: dict[str, Any] | None = None,
             scheduled_at: datetime | None = None) -> Job:
    return Job(
        id=uuid4(),
        queue_name=handler.queue_name,
        job_type=handler.job_type,
        payload=payload if payload is not None else handler.payload(rng),
        priority=rng.choice((0, 0, 0, 0, 5, 10)),
        max_retries=handler.max_retries,
        scheduled_at=scheduled_at,
        metadata={"source": "portico_demo", "request_id": secrets.token_hex(6)},
    )


def _payload_meeting(handler: DemoHandler, failure: Failure, rng: random.Random) -> dict[str, Any]:
    """A payload a run could meet this failure with (some hit only some payloads, and a
    certain failure before it in the list hides it)."""
    for _ in range(1000):
        payload = handler.payload(rng)
        before = sum(f.rate for f in handler.failures[:handler.failures.index(failure)]
                     if f.when(payload))
        if failure.when(payload) and before < 1.0:
            return payload
    raise DemoError(f"no payload of {handler.job_type} meets one of its failures")


# -- emptying ------------------------------------------------------------------------------


def empty_job_store(store: DatabaseJobQueueAdapter) -> int:
    """Delete every job and its attempt history, in one transaction; return how many jobs.

    No queue operation deletes unfinished jobs (pruning takes completed ones only). The
    counters follow by themselves: the same triggers that count every change count the
    deletions, and lifetime totals keep counting, as they do across pruning.
    """
    from jobs.models import JobAttemptRecord, JobRecord

    with transaction.atomic(using=store.using), connections[store.using].cursor() as cursor:
        cursor.execute(f"DELETE FROM {JobAttemptRecord._meta.db_table}")
        cursor.execute(f"DELETE FROM {JobRecord._meta.db_table}")
        deleted = cursor.rowcount
    store.compact_counters_sync()
    return deleted


# -- seeding -------------------------------------------------------------------------------


def _claim_exactly(store: DatabaseJobQueueAdapter, queue_name: str, ids: Iterable[UUID],
                   others: list[Job]) -> dict[UUID, Job]:
    """Claim exactly these (due) jobs of the queue, as a worker would.

    A claim takes the best due jobs, which may be others left waiting by an earlier run:
    those go to ``others``, held (so the next claim gets past them) until the caller
    releases them with _release.
    """
    wanted = set(ids)
    claimed: dict[UUID, Job] = {}
    while len(claimed) < len(wanted):
        batch = store.dequeue_many_sync(queue_name, len(wanted) - len(claimed))
        if not batch:
            others += claimed.values()
            raise DemoError(
                f"queue {queue_name!r}: {len(wanted) - len(claimed)} demo job(s) were claimed by "
                "someone else; stop the workers serving it while the demo is seeded"
            )
        for job in batch:
            if job.id in wanted:
                claimed[job.id] = job
            else:
                others.append(job)
    return claimed


def _release(store: DatabaseJobQueueAdapter, jobs: Iterable[Job]) -> None:
    """Give claimed jobs back to their queue unrun."""
    for job in jobs:
        try:
            store.release_sync(job.id, claim=job)
        except InvalidJobStateError:
            pass  # rescued meanwhile: it is back in its queue already


@dataclass
class _Plan:
    """The jobs one queue is seeded with, by the state each is taken to."""

    completed: list[Job]
    failed: list[tuple[Job, str]]
    retrying: list[tuple[Job, str]]
    dead_letter: list[tuple[Job, str]]
    running: list[Job]
    cancelled: list[Job]
    pending: list[Job]
    scheduled: list[Job]


def _plan(handler: DemoHandler, rng: random.Random, now: datetime) -> _Plan:
    def failing(failure: Failure) -> tuple[Job, str]:
        payload = _payload_meeting(handler, failure, rng)
        return _new_job(handler, rng, payload), failure.message(payload)

    final = [f for f in handler.failures if not f.retry]
    transient = [f for f in handler.failures if f.retry]
    # A few distinct errors, several jobs each: what the dead-letter page groups.
    dead = [failing(f) for f in rng.sample(transient, min(2, len(transient)))
            for _ in range(rng.randint(3, 5))]
    return _Plan(
        completed=[_new_job(handler, rng) for _ in range(rng.randint(40, 120))],
        failed=[failing(rng.choice(final)) for _ in range(rng.randint(2, 5))],
        retrying=[failing(rng.choice(transient)) for _ in range(rng.randint(3, 6))],
        dead_letter=dead,
        running=[_new_job(handler, rng) for _ in range(rng.randint(2, 4))],
        cancelled=[_new_job(handler, rng) for _ in range(rng.randint(1, 2))],
        pending=[_new_job(handler, rng) for _ in range(rng.randint(15, 40))],
        scheduled=[_new_job(handler, rng, scheduled_at=now + timedelta(seconds=rng.randint(120, 7200)))
                   for _ in range(rng.randint(5, 12))],
    )


def seed_queue(store: DatabaseJobQueueAdapter, handler: DemoHandler, rng: random.Random) -> Counter[str]:
    """Seed the handler's queue with jobs in all seven states; return how many of each."""
    plan = _plan(handler, rng, datetime.now(UTC))
    queue = handler.queue_name
    ran = [*plan.completed, *(j for j, _ in plan.failed), *(j for j, _ in plan.retrying),
           *(j for j, _ in plan.dead_letter), *plan.running]
    store.enqueue_many_sync(ran)
    others: list[Job] = []
    try:
        claims = _claim_exactly(store, queue, [job.id for job in ran], others)
        store.acknowledge_many_sync(
            [claims[job.id] for job in plan.completed],
            [handler.result(job.payload, rng) for job in plan.completed],
        )
        store.reject_many_sync([claims[job.id] for job, _ in plan.failed],
                               [error for _, error in plan.failed], requeue=False)
        # Retried later, by the worker the demo runs beside: minutes from now.
        store.reject_many_sync([claims[job.id] for job, _ in plan.retrying],
                               [error for _, error in plan.retrying], requeue=True,
                               delays=[rng.uniform(60, 900) for _ in plan.retrying])
        # Dead letters earn their place: every retry runs and fails, so each has its history.
        errors = {job.id: error for job, error in plan.dead_letter}
        attempts = [claims[job.id] for job, _ in plan.dead_letter]
        while attempts:
            outcomes = store.reject_many_sync(attempts, [errors[job.id] for job in attempts],
                                              requeue=True)
            again = [job.id for job in outcomes if job.status is JobStatus.RETRYING]
            attempts = list(_claim_exactly(store, queue, again, others).values()) if again else []
    finally:
        _release(store, others)
    # plan.running stay claimed: their lease runs out, and the worker's rescue retries them.

    store.enqueue_many_sync(plan.cancelled)
    for job in plan.cancelled:
        store.cancel_job_sync(job.id)
    store.enqueue_many_sync([*plan.pending, *plan.scheduled])
    return Counter({
        JobStatus.COMPLETED.value: len(plan.completed),
        JobStatus.FAILED.value: len(plan.failed) + len(plan.cancelled),
        JobStatus.RETRYING.value: len(plan.retrying),
        JobStatus.DEAD_LETTER.value: len(plan.dead_letter),
        JobStatus.RUNNING.value: len(plan.running),
        JobStatus.PENDING.value: len(plan.pending),
        JobStatus.SCHEDULED.value: len(plan.scheduled),
    })


def seed(store: DatabaseJobQueueAdapter, rng: random.Random | None = None) -> dict[str, Counter[str]]:
    """Seed every demo queue with jobs in all seven states; per queue, how many of each."""
    rng = rng or random.Random()
    return {cls.queue_name: seed_queue(store, cls(), rng) for cls in HANDLERS}


# -- live traffic --------------------------------------------------------------------------

# Most jobs of each queue in one burst: plenty of quick emails, few slow reports.
_BURST = {"default": 3, "emails": 4, "reports": 1, "payments": 3, "webhooks": 2}


def burst(rng: random.Random, handlers: Sequence[DemoHandler], full: Iterable[str] = ()) -> list[Job]:
    """One burst of new jobs across the queues not ``full``; about one in five scheduled a few
    seconds ahead."""
    skip = set(full)
    now = datetime.now(UTC)
    jobs = []
    for handler in handlers:
        if handler.queue_name in skip:
            continue
        for _ in range(rng.randint(0, _BURST.get(handler.queue_name, 2))):
            later = now + timedelta(seconds=rng.uniform(2, 10)) if rng.random() < 0.2 else None
            jobs.append(_new_job(handler, rng, scheduled_at=later))
    return jobs


def generate(store: DatabaseJobQueueAdapter, stop: threading.Event, rng: random.Random | None = None,
             interval: tuple[float, float] = (1.0, 2.0),
             on_burst: Callable[[list[Job]], None] | None = None) -> int:
    """Enqueue a burst every ``interval`` seconds until ``stop`` is set; return the jobs enqueued.

    A queue whose waiting jobs reach LIVE_BACKLOG_LIMIT gets nothing until it drains. A
    database error is logged and the next burst tries again: traffic is a demo, not a duty.
    """
    rng = rng or random.Random()
    handlers = [cls() for cls in HANDLERS]
    total = 0
    while not stop.is_set():
        try:
            full = [s.queue_name for s in store.get_all_queue_stats_sync()
                    if s.pending_count + s.scheduled_count + s.retrying_count >= LIVE_BACKLOG_LIMIT]
            jobs = store.enqueue_many_sync(burst(rng, handlers, full))
        except DatabaseError:
            log.exception("portico_demo --live: a burst failed; trying again")
        else:
            total += len(jobs)
            if on_burst is not None:
                on_burst(jobs)
        stop.wait(rng.uniform(*interval))
    return total


# -- the demo login ------------------------------------------------------------------------


def demo_password(path: Path) -> str:
    """The demo login's password, kept in ``path``: made up (and written) on first use."""
    if path.exists():
        password = path.read_text().strip()
        if password:
            return password
    password = secrets.token_urlsafe(12)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(password + "\n")
    return password


def ensure_demo_login(password: str, username: str = DEMO_USERNAME) -> tuple[str, str]:
    """Create or update the demo user; return (username, what it may do).

    It joins the "operator" group when there is one (and may then use the admin with the
    group's permissions); without it, it is a superuser so the demo is usable at all.
    """
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    user, _ = get_user_model().objects.get_or_create(username=username)
    user.set_password(password)
    user.is_active = True
    user.is_staff = True
    operator = Group.objects.filter(name="operator").first()
    user.is_superuser = operator is None
    user.save()
    if operator is not None:
        user.groups.add(operator)
        return username, 'member of the "operator" group'
    return username, 'superuser (no "operator" group exists)'
