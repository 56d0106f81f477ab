"""The schedule trigger: cron schedules (PORTICO_SCHEDULES) that create one job per fire time, however many schedulers run."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connections, transaction
from django.db.models import Max, OuterRef, Subquery

from jobs.conf import setting
from jobs.models import ScheduleFire
from jobs.services import job_queue, job_service
from portico.exceptions import InvalidJobError
from portico.kits.job import JobService
from portico.ports.job import DEFAULT_MAX_RETRIES, DEFAULT_PRIORITY, DEFAULT_QUEUE, Job
from portico.ports.job_queue import SyncJobQueue
from portico.ports.job_trigger import JobTrigger
from portico.validation import MAX_NAME_LENGTH, check_job

log = logging.getLogger("portico.scheduler")

SCHEDULE_FIELDS = ("name", "cron", "job_type", "payload", "queue_name", "priority", "timezone",
                   "max_retries")
REQUIRED_FIELDS = ("name", "cron", "job_type", "payload")
# Fire-time records older than this are pruned (the latest of each schedule is always kept).
PRUNE_EVERY = 3600.0


class ScheduleError(ImproperlyConfigured):
    """PORTICO_SCHEDULES is not valid."""


class CronClock:
    """A five-field cron expression read on the wall clock of one time zone.

    Fire times come out as aware UTC instants, strictly increasing. Every local time the
    expression matches fires exactly once, including on daylight-saving change days:

    - a local time that does not exist (the clock jumps over it when it springs forward,
      e.g. 02:30 in Europe/Berlin on the last Sunday of March) fires at the first instant
      after the jump (03:00 local); several such times collapse into that one fire, and a
      regular fire at that same instant is not repeated;
    - a local time that happens twice (the clock falls back, e.g. 01:30 in America/New_York
      on the first Sunday of November) fires once, at its first occurrence.
    """

    def __init__(self, expression: str, zone: ZoneInfo) -> None:
        self.expression = expression
        self.zone = zone

    def __repr__(self) -> str:
        return f"CronClock({self.expression!r}, {self.zone.key!r})"

    def next_after(self, instant: datetime) -> datetime:
        """The first fire time strictly after ``instant``."""
        instant = as_utc(instant)
        local = instant.astimezone(self.zone)
        # Local wall times only go forward within croniter; mapped to instants they never
        # go back (see _instant), so the first one past ``instant`` is the answer. Those in
        # the rest of a repeated hour map before ``instant`` and are passed over.
        times = croniter(self.expression, local.replace(tzinfo=None))
        while True:
            fire = self._instant(times.get_next(datetime))
            if fire > instant:
                return fire

    def latest_at_or_before(self, instant: datetime) -> datetime:
        """The last fire time at or before ``instant``."""
        instant = as_utc(instant)
        local = instant.astimezone(self.zone)
        wall = local.replace(tzinfo=None, microsecond=0)
        if local.fold:
            # In the second pass of a repeated hour the wall times up to its end already
            # fired, in the first pass: start looking from the end of the repeat.
            wall += local.replace(fold=0).utcoffset() - local.utcoffset()
        times = croniter(self.expression, wall + timedelta(seconds=1))
        while True:
            fire = self._instant(times.get_prev(datetime))
            if fire <= instant:
                return fire

    def fires_between(self, start: datetime, end: datetime) -> list[datetime]:
        """Every fire time after ``start`` and at or before ``end``, oldest first."""
        fires: list[datetime] = []
        fire = self.next_after(start)
        while fire <= as_utc(end):
            fires.append(fire)
            fire = self.next_after(fire)
        return fires

    def _instant(self, wall: datetime) -> datetime:
        """The UTC instant a local wall time fires at (see the class docstring for DST)."""
        first = wall.replace(tzinfo=self.zone, fold=0)
        instant = first.astimezone(UTC)
        if instant.astimezone(self.zone).replace(tzinfo=None) == wall:
            return instant  # it exists; for a repeated time, fold=0 is the first occurrence
        # The wall time is in a gap. Read with the offset after the jump (fold=1) it lands
        # before the jump; with the offset before it (fold=0), after: the jump lies between.
        return self._jump_between(wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC), instant)

    def _jump_between(self, before: datetime, after: datetime) -> datetime:
        """The instant (to the second; tz transitions are on whole seconds) the offset changes."""
        offset = before.astimezone(self.zone).utcoffset()
        low, high = int(before.timestamp()), int(after.timestamp())
        while high - low > 1:
            middle = (low + high) // 2
            if datetime.fromtimestamp(middle, self.zone).utcoffset() == offset:
                low = middle
            else:
                high = middle
        return datetime.fromtimestamp(high, UTC)


def as_utc(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{value.isoformat()} is a naive datetime; pass a timezone-aware one")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class Schedule:
    """One validated PORTICO_SCHEDULES entry."""

    name: str
    cron: str
    job_type: str
    payload: dict[str, Any]
    queue_name: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    timezone: str = "UTC"
    max_retries: int = DEFAULT_MAX_RETRIES
    clock: CronClock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "clock", CronClock(self.cron, ZoneInfo(self.timezone)))

    def build_job(self, service: JobService, fire_at: datetime) -> Job:
        # The job says which fire created it; the schedule's payload is copied, never shared.
        return service.build_job(
            self.job_type, dict(self.payload), self.queue_name, self.priority,
            max_retries=self.max_retries,
            metadata={"schedule": self.name, "fire_at": fire_at.isoformat()},
        )


def parse_schedules(entries: Any, service: JobService) -> list[Schedule]:
    """Validate PORTICO_SCHEDULES; raise ScheduleError naming the entry and what is wrong."""
    if not isinstance(entries, list | tuple):
        raise ScheduleError(f"PORTICO_SCHEDULES must be a list of dicts, not {type(entries).__name__}")
    schedules: list[Schedule] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        schedule = _parse_schedule(index, entry, service)
        if schedule.name in names:
            raise ScheduleError(f"PORTICO_SCHEDULES[{index}]: the name {schedule.name!r} is used twice")
        names.add(schedule.name)
        schedules.append(schedule)
    return schedules


def _parse_schedule(index: int, entry: Any, service: JobService) -> Schedule:
    where = f"PORTICO_SCHEDULES[{index}]"
    if not isinstance(entry, Mapping):
        raise ScheduleError(f"{where} must be a dict, not {type(entry).__name__}")
    if isinstance(entry.get("name"), str):
        where += f" ({entry['name']!r})"
    unknown = sorted(set(entry) - set(SCHEDULE_FIELDS))
    if unknown:
        raise ScheduleError(
            f"{where} has unknown keys {', '.join(map(repr, unknown))}; "
            f"the keys are {', '.join(SCHEDULE_FIELDS)}"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in entry]
    if missing:
        raise ScheduleError(f"{where} is missing {', '.join(missing)}")
    name = entry["name"]
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise ScheduleError(f"{where}: name must be a non-empty string of at most {MAX_NAME_LENGTH} characters")
    cron = _check_cron(where, entry["cron"])
    zone = _check_zone(where, entry.get("timezone", "UTC"))
    if not isinstance(entry["payload"], dict):
        raise ScheduleError(f"{where}: payload must be a dict, not {type(entry['payload']).__name__}")
    try:
        schedule = Schedule(
            name=name, cron=cron, job_type=entry["job_type"], payload=entry["payload"],
            queue_name=entry.get("queue_name", DEFAULT_QUEUE), priority=entry.get("priority", DEFAULT_PRIORITY),
            timezone=zone.key, max_retries=entry.get("max_retries", DEFAULT_MAX_RETRIES),
        )
        # The job it would create goes through the same checks as any job: a registered
        # type, a JSON payload within the size limit, sane queue, priority and retries.
        check_job(schedule.build_job(service, datetime.now(UTC)),
                  getattr(service.job_queue, "max_payload_bytes", None))
    except (InvalidJobError, TypeError) as exc:
        raise ScheduleError(f"{where}: {exc}") from exc
    try:
        schedule.clock.next_after(datetime.now(UTC))
    except CroniterError as exc:
        raise ScheduleError(f"{where}: cron {cron!r} never fires ({exc})") from exc
    return schedule


def _check_cron(where: str, cron: Any) -> str:
    if not isinstance(cron, str) or not cron.strip():
        raise ScheduleError(f"{where}: cron must be a string such as '30 2 * * *'")
    cron = " ".join(cron.split())
    # Minute resolution only: croniter's seconds and year fields would make a schedule
    # look like it fires when the scheduler does not check.
    if not cron.startswith("@") and len(cron.split()) != 5:
        raise ScheduleError(
            f"{where}: cron {cron!r} must have five fields (minute hour day-of-month month "
            "day-of-week) or be an alias such as @daily"
        )
    try:
        croniter(cron, datetime(2000, 1, 1))
    except CroniterError as exc:
        raise ScheduleError(f"{where}: cron {cron!r} is not a valid cron expression ({exc})") from exc
    return cron


def _check_zone(where: str, timezone: Any) -> ZoneInfo:
    # A name, not a tzinfo object: a fixed offset has no daylight-saving rules to follow.
    if not isinstance(timezone, str) or not timezone.strip():
        raise ScheduleError(
            f"{where}: timezone must be an IANA zone name such as 'Europe/Berlin' (or left "
            f"out for UTC), not {timezone!r}"
        )
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            f"{where}: unknown timezone {timezone!r}; use an IANA zone name such as 'Europe/Berlin'"
        ) from exc


def database_now(using: str = "default") -> datetime:
    """The database's clock, so every scheduler process agrees on what is due."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return datetime.now(UTC)
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return as_utc(cursor.fetchone()[0])


class ScheduleTrigger(JobTrigger):
    """Creates the jobs of cron schedules at their fire times, once per fire time.

    ``tick()`` creates the job of the latest fire time due since the last one this trigger
    handled; ``start()`` runs it every ``interval`` seconds on a thread of its own.

    - Exactly once: the job and a ScheduleFire row unique on (schedule, fire time) are
      inserted in one transaction, so of several schedulers trying one fire time, one wins
      and the others' attempts roll back.
    - Catch-up: after downtime only the most recent missed fire time gets a job (the
      missed ones before it are logged, not run), so a scheduler that was down for a day
      does not unleash a day of a minutely job at once.
    - A schedule seen for the first time starts at the next fire time, not a past one.

    All of this state is in the database, so a trigger made afresh for every tick (a
    periodic task, say) behaves the same as a long-running one.
    """

    def __init__(self, schedules: Sequence[Mapping[str, Any]] | None = None, *,
                 interval: float | None = None, using: str = "default") -> None:
        self._entries = schedules
        self.interval = float(interval if interval is not None else setting("PORTICO_SCHEDULER_INTERVAL"))
        # At most a second, so a job is created within about a second of its fire time.
        if not 0 < self.interval <= 1:
            raise ScheduleError(f"the scheduler interval must be more than 0 and at most 1 second, not {self.interval:g}")
        self.using = using
        self.schedules: list[Schedule] | None = None
        self._service: JobService | None = None
        self._queue: SyncJobQueue | None = None
        # Per schedule: the latest fire time this trigger created or saw created.
        self._last: dict[str, datetime] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_prune = 0.0
        self.created = 0
        self.created_elsewhere = 0

    # -- the port ------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    async def start(self) -> None:
        """Validate the schedules (ScheduleError if one is wrong), then tick in the background."""
        if self._thread is not None:
            raise RuntimeError("this ScheduleTrigger is already started")
        if self.schedules is None:
            self.load()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="portico-scheduler", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop ticking; returns once a tick in progress has finished."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        await asyncio.to_thread(thread.join)
        self._thread = None

    # -- ticking -------------------------------------------------------------------------

    def load(self) -> list[Schedule]:
        """Read and validate the schedules (from PORTICO_SCHEDULES unless given)."""
        entries = self._entries if self._entries is not None else setting("PORTICO_SCHEDULES")
        queue = job_queue(self.using)
        self._queue, self._service = queue, job_service(queue)
        self.schedules = parse_schedules(entries, self._service)
        return self.schedules

    def tick(self, now: datetime | None = None) -> list[Job]:
        """Create the job of each schedule's latest due fire time not yet handled; return them.

        ``now`` defaults to the database's clock. A schedule that fails is logged and the
        others still get their jobs; the first failure is raised afterwards.
        """
        if self.schedules is None:
            self.load()
        assert self.schedules is not None and self._service is not None
        now = database_now(self.using) if now is None else as_utc(now)
        self._remember_last_fires(now)
        created: list[Job] = []
        failure: Exception | None = None
        for schedule in self.schedules:
            try:
                job = self._tick_one(schedule, now)
            except Exception as exc:  # one broken schedule must not stop the rest
                log.exception("schedule %r: creating its job failed; retrying next tick", schedule.name)
                failure = failure or exc
                continue
            if job is not None:
                created.append(job)
        if failure is not None:
            raise failure
        return created

    def _remember_last_fires(self, now: datetime) -> None:
        """Pick up each schedule new to this trigger from its last recorded fire.

        A schedule with no record at all is new: it starts from its next fire time, and
        its latest past one is recorded without a job, so that any trigger, including one
        made afresh for a single tick, knows where it started.
        """
        assert self.schedules is not None
        unknown = {s.name: s for s in self.schedules if s.name not in self._last}
        if not unknown:
            return
        fires = ScheduleFire.objects.using(self.using)
        recorded = dict(
            fires.filter(schedule__in=unknown).values("schedule").annotate(last=Max("fire_at"))
            .values_list("schedule", "last")
        )
        starts = [ScheduleFire(schedule=name, fire_at=schedule.clock.latest_at_or_before(now), job_id=None)
                  for name, schedule in unknown.items() if name not in recorded]
        # Another scheduler may record the same start at the same moment: either row will do.
        fires.bulk_create(starts, ignore_conflicts=True)
        recorded.update({start.schedule: start.fire_at for start in starts})
        for name in unknown:
            self._last[name] = as_utc(recorded[name])

    def _tick_one(self, schedule: Schedule, now: datetime) -> Job | None:
        last = self._last[schedule.name]
        fire_at = schedule.clock.latest_at_or_before(now)
        if fire_at <= last:
            return None
        missed = schedule.clock.next_after(last)
        if missed < fire_at:
            log.warning(
                "schedule %r: fire times from %s to before %s were missed (the scheduler was "
                "not running); only the latest, %s, gets a job",
                schedule.name, missed.isoformat(), fire_at.isoformat(), fire_at.isoformat(),
            )
        job = self._fire(schedule, fire_at)
        self._last[schedule.name] = fire_at
        return job

    def _fire(self, schedule: Schedule, fire_at: datetime) -> Job | None:
        """Create the fire's job, or None if another scheduler already did."""
        assert self._service is not None and self._queue is not None
        job = schedule.build_job(self._service, fire_at)
        queue = self._queue
        try:
            with transaction.atomic(using=self.using):
                # The fire row first: a concurrent scheduler waits here on the unique key
                # and fails once this commits (or goes ahead if this rolls back).
                ScheduleFire.objects.using(self.using).create(
                    schedule=schedule.name, fire_at=fire_at, job_id=job.id
                )
                stored = queue.enqueue_sync(job)
        except IntegrityError:
            # Only the fire row can raise it: enqueue turns its own into DuplicateJobError.
            self.created_elsewhere += 1
            log.debug("schedule %r: fire %s was created by another scheduler", schedule.name, fire_at)
            return None
        self.created += 1
        log.info("schedule %r: fire %s created job %s", schedule.name, fire_at.isoformat(), stored.id)
        return stored

    def prune_fires(self, older_than: timedelta | None = None) -> int:
        """Delete fire records older than the retention, keeping each schedule's latest."""
        if older_than is None:
            older_than = timedelta(seconds=float(setting("PORTICO_RETENTION")))
        cutoff = database_now(self.using) - older_than
        fires = ScheduleFire.objects.using(self.using)
        latest = fires.filter(schedule=OuterRef("schedule")).order_by("-fire_at").values("fire_at")[:1]
        deleted, _ = fires.filter(fire_at__lt=cutoff).filter(fire_at__lt=Subquery(latest)).delete()
        return deleted

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self.tick()
                    if time.monotonic() - self._last_prune > PRUNE_EVERY:
                        self._last_prune = time.monotonic()
                        self.prune_fires()
                except Exception:  # a database outage must not end the scheduler
                    log.exception("the scheduler's tick failed; trying again in %.1fs", self.interval)
                    # A broken connection is replaced on the next tick instead of failing forever.
                    connections[self.using].close_if_unusable_or_obsolete()
                self._stopping.wait(self.interval)
        finally:
            connections[self.using].close()
