"""The schedule trigger: cron fire times across daylight-saving changes, catch-up, and one job per fire time across processes."""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg
import pytest
from django.db import connection, connections
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.models import JobRecord, ScheduleFire
from jobs.triggers import CronClock, Schedule, ScheduleError, ScheduleTrigger
from portico.ports.job import JobStatus

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HANDLERS = ["tests.support.handlers.NoopHandler", "tests.support.handlers.RecordHandler"]
MINUTE = timedelta(minutes=1)

# Zones with daylight saving whose clock changes stay within one local day.
DAILY_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "America/Santiago",
               "Australia/Lord_Howe", "Pacific/Chatham", "America/Havana", "Europe/Dublin"]
# Plus zones with odd changes: past midnight (Nuuk), a skipped day (Apia), many a year
# (Casablanca), and DST that ended (Tehran).
ALL_ZONES = [*DAILY_ZONES, "America/Nuuk", "Pacific/Apia", "Africa/Casablanca", "Asia/Tehran"]


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def local(zone: str, *parts: int, fold: int = 0) -> datetime:
    return datetime(*parts, tzinfo=ZoneInfo(zone), fold=fold).astimezone(UTC)


@functools.cache
def transitions(zone_name: str) -> tuple[datetime, ...]:
    """The instants the zone's UTC offset changes, 2000 to 2037 (found by scanning, not by CronClock)."""
    zone = ZoneInfo(zone_name)
    found = []
    step = timedelta(hours=6)
    t = utc(2000, 1, 1)
    offset = t.astimezone(zone).utcoffset()
    while t < utc(2037, 1, 1):
        after = t + step
        if after.astimezone(zone).utcoffset() != offset:
            low, high = t, after
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                if middle.astimezone(zone).utcoffset() == offset:
                    low = middle
                else:
                    high = middle
            found.append(high.replace(microsecond=0))
            offset = after.astimezone(zone).utcoffset()
        t = after
    return tuple(found)


def expected_fires(minutes: set[int], hours: set[int], zone_name: str,
                   start: datetime, end: datetime) -> list[datetime]:
    """The documented rules, minute by minute along UTC: each matching local time that exists
    fires at its first occurrence; matching local times the clock jumps over fire at the jump."""
    zone = ZoneInfo(zone_name)
    fires = []
    t = start.replace(second=0, microsecond=0) + MINUTE
    previous_wall = (t - MINUTE).astimezone(zone).replace(tzinfo=None)
    while t <= end:
        here = t.astimezone(zone)
        wall = here.replace(tzinfo=None)
        skipped = previous_wall + MINUTE
        jumped_over_a_match = False
        while skipped < wall:
            if skipped.minute in minutes and skipped.hour in hours:
                jumped_over_a_match = True
                break
            skipped += MINUTE
        first_occurrence = here.fold == 0
        if jumped_over_a_match or (first_occurrence and wall.minute in minutes and wall.hour in hours):
            fires.append(t)
        previous_wall = wall
        t += MINUTE
    return fires


# -- fire times across daylight-saving changes (no database) ---------------------------------


def test_a_daily_time_the_clock_springs_over_fires_once_at_the_end_of_the_jump():
    clock = CronClock("30 2 * * *", ZoneInfo("Europe/Berlin"))
    fires = clock.fires_between(utc(2024, 3, 29), utc(2024, 4, 2))
    assert fires == [
        local("Europe/Berlin", 2024, 3, 29, 2, 30),
        local("Europe/Berlin", 2024, 3, 30, 2, 30),
        local("Europe/Berlin", 2024, 3, 31, 3, 0),  # 02:30 does not exist that day
        local("Europe/Berlin", 2024, 4, 1, 2, 30),
    ]
    assert all(fire.tzinfo is UTC for fire in fires)


def test_a_daily_time_the_clock_falls_back_over_fires_once_at_its_first_occurrence():
    clock = CronClock("30 1 * * *", ZoneInfo("America/New_York"))
    fires = clock.fires_between(utc(2024, 11, 2), utc(2024, 11, 5))
    assert fires == [utc(2024, 11, 2, 5, 30), utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]
    assert fires[1] == local("America/New_York", 2024, 11, 3, 1, 30, fold=0)  # EDT, not EST


def test_in_a_repeated_hour_each_matching_wall_time_fires_once():
    clock = CronClock("*/20 1 * * *", ZoneInfo("America/New_York"))
    fires = clock.fires_between(utc(2024, 11, 3, 4), utc(2024, 11, 3, 8))
    assert [f.astimezone(clock.zone).strftime("%H:%M%z") for f in fires] == [
        "01:00-0400", "01:20-0400", "01:40-0400"]


def test_times_the_clock_jumps_over_collapse_into_one_fire_at_the_jump():
    clock = CronClock("*/20 * * * *", ZoneInfo("America/New_York"))
    fires = clock.fires_between(utc(2024, 3, 10, 6, 30), utc(2024, 3, 10, 7, 30))
    # 02:00, 02:20 and 02:40 do not exist; 03:00 does: one fire at 03:00, not four.
    assert [f.astimezone(clock.zone).strftime("%H:%M%z") for f in fires] == [
        "01:40-0500", "03:00-0400", "03:20-0400"]


def test_a_jump_past_midnight_moves_the_run_to_the_next_day_without_losing_or_doubling_it():
    # America/Nuuk springs from 23:00 straight to 00:00: 23:30 on 30 March 2024 never happens.
    clock = CronClock("30 23 * * *", ZoneInfo("America/Nuuk"))
    fires = clock.fires_between(utc(2024, 3, 29), utc(2024, 4, 2))
    assert [f.astimezone(clock.zone).isoformat() for f in fires] == [
        "2024-03-28T23:30:00-02:00", "2024-03-29T23:30:00-02:00",
        "2024-03-31T00:00:00-01:00", "2024-03-31T23:30:00-01:00"]


def test_the_latest_fire_in_the_second_pass_of_a_repeated_hour_is_from_the_first_pass():
    clock = CronClock("*/20 * * * *", ZoneInfo("America/New_York"))
    second_pass = local("America/New_York", 2024, 11, 3, 1, 30, fold=1)
    assert clock.latest_at_or_before(second_pass) == local("America/New_York", 2024, 11, 3, 1, 40)
    assert clock.next_after(second_pass) == local("America/New_York", 2024, 11, 3, 2, 0)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), zone_name=st.sampled_from(DAILY_ZONES),
       hour=st.one_of(st.sampled_from([0, 1, 2, 3, 23]), st.integers(0, 23)),
       minute=st.sampled_from([0, 1, 15, 30, 45, 59]))
def test_a_daily_schedule_fires_exactly_once_on_every_local_day_around_a_dst_change(
        data, zone_name, hour, minute):
    change = data.draw(st.sampled_from(transitions(zone_name)), label="change")
    clock = CronClock(f"{minute} {hour} * * *", ZoneInfo(zone_name))
    start, end = change - timedelta(days=3), change + timedelta(days=3)

    fires = clock.fires_between(start, end)

    assert all(fire.tzinfo is UTC for fire in fires)
    assert all(a < b for a, b in zip(fires, fires[1:], strict=False)), "strictly increasing, no duplicates"
    per_day = Counter(fire.astimezone(clock.zone).date() for fire in fires)
    first, last = start.astimezone(clock.zone).date(), end.astimezone(clock.zone).date()
    whole_days = [first + timedelta(days=n) for n in range(1, (last - first).days)]
    assert {day: per_day[day] for day in whole_days} == {day: 1 for day in whole_days}


@settings(max_examples=150, deadline=None)
@given(data=st.data(), zone_name=st.sampled_from(ALL_ZONES),
       minutes=st.sets(st.sampled_from([0, 10, 15, 20, 30, 45, 59]), min_size=1, max_size=3),
       hours=st.one_of(st.sets(st.integers(0, 23), min_size=1, max_size=4), st.just(set(range(24)))))
def test_fire_times_follow_the_documented_dst_rules_in_every_zone(data, zone_name, minutes, hours):
    change = data.draw(st.sampled_from(transitions(zone_name)), label="change")
    hour_field = "*" if len(hours) == 24 else ",".join(map(str, sorted(hours)))
    clock = CronClock(f"{','.join(map(str, sorted(minutes)))} {hour_field} * * *", ZoneInfo(zone_name))
    start, end = change - timedelta(hours=30), change + timedelta(hours=30)

    fires = clock.fires_between(start, end)

    assert fires == expected_fires(minutes, hours, zone_name, start, end)
    assert all(fire.tzinfo is UTC for fire in fires)
    assert all(a < b for a, b in zip(fires, fires[1:], strict=False))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), zone_name=st.sampled_from(ALL_ZONES),
       expression=st.sampled_from(["*/20 * * * *", "30 1 * * *", "0 0 * * *", "15 2,3 * * 0",
                                   "45 23 * * *", "@hourly"]),
       offset_seconds=st.integers(-6 * 3600, 6 * 3600))
def test_the_latest_fire_and_the_next_fire_bracket_any_instant(data, zone_name, expression, offset_seconds):
    change = data.draw(st.sampled_from(transitions(zone_name)), label="change")
    clock = CronClock(expression, ZoneInfo(zone_name))
    instant = change + timedelta(seconds=offset_seconds)

    latest, following = clock.latest_at_or_before(instant), clock.next_after(instant)

    assert latest <= instant < following
    assert clock.next_after(latest) == following  # nothing fires in between
    assert clock.latest_at_or_before(following) == following


# -- validation at start ----------------------------------------------------------------


GOOD_SCHEDULE = {"name": "nightly", "cron": "30 2 * * *", "job_type": "test.noop", "payload": {}}


@pytest.fixture
def handlers(settings):
    settings.PORTICO_HANDLERS = HANDLERS
    return settings


@pytest.mark.parametrize(("change", "fragment"), [
    ({"cron": "61 * * * *"}, "is not a valid cron expression"),
    ({"cron": "* * * *"}, "must have five fields"),
    ({"cron": "0 * * * * 30"}, "must have five fields"),
    ({"cron": "0 0 30 2 *"}, "never fires"),
    ({"cron": ""}, "cron must be a string"),
    ({"job_type": "no.such.type"}, "no handler is registered for job type 'no.such.type'"),
    ({"timezone": "Europe/Berln"}, "unknown timezone 'Europe/Berln'"),
    ({"timezone": None}, "timezone must be an IANA zone name"),
    ({"timezone": ""}, "timezone must be an IANA zone name"),
    ({"timezone": "../../etc/passwd"}, "unknown timezone"),
    ({"payload": [1]}, "payload must be a dict"),
    ({"payload": {"when": object()}}, "not JSON-serializable"),
    ({"priority": "high"}, "priority must be an integer"),
    ({"max_retries": -1}, "max_retries must be between"),
    ({"queue_name": ""}, "queue_name must be a non-empty string"),
    ({"crontab": "* * * * *"}, "unknown keys 'crontab'"),
    ({"name": ""}, "name must be a non-empty string"),
], ids=lambda value: repr(value) if isinstance(value, dict) else None)
def test_a_bad_schedule_is_refused_at_start_with_a_clear_error(handlers, change, fragment):
    trigger = ScheduleTrigger([{**GOOD_SCHEDULE, **change}])
    with pytest.raises(ScheduleError, match="PORTICO_SCHEDULES\\[0\\]") as raised:
        asyncio.run(trigger.start())
    assert fragment in str(raised.value)
    assert not trigger.is_running


def test_two_schedules_with_one_name_are_refused(handlers):
    with pytest.raises(ScheduleError, match="the name 'nightly' is used twice"):
        ScheduleTrigger([GOOD_SCHEDULE, GOOD_SCHEDULE]).load()


def test_a_missing_key_is_named(handlers):
    with pytest.raises(ScheduleError, match="is missing cron"):
        ScheduleTrigger([{"name": "x", "job_type": "test.noop", "payload": {}}]).load()


def test_schedules_come_from_the_setting_with_defaults_filled_in(handlers):
    handlers.PORTICO_SCHEDULES = [GOOD_SCHEDULE, {**GOOD_SCHEDULE, "name": "berlin", "timezone": "Europe/Berlin",
                                                  "queue_name": "reports", "priority": 5, "max_retries": 0}]
    nightly, berlin = ScheduleTrigger().load()
    assert (nightly.queue_name, nightly.priority, nightly.timezone, nightly.max_retries) == ("default", 0, "UTC", 3)
    assert (berlin.queue_name, berlin.priority, berlin.timezone, berlin.max_retries) == (
        "reports", 5, "Europe/Berlin", 0)


# -- ticking on the database --------------------------------------------------------------


@pytest.fixture
def fresh(handlers, empty_store):
    """Handlers registered and an empty job store (fire records are flushed after each test)."""
    return handlers


def fires_of(name: str) -> list[datetime]:
    """The fire times of a schedule that got a job (not the record of where it started)."""
    fires = ScheduleFire.objects.filter(schedule=name, job_id__isnull=False).order_by("fire_at")
    return list(fires.values_list("fire_at", flat=True))


def tick_through(trigger: ScheduleTrigger, start: datetime, end: datetime, step: timedelta) -> list:
    created = []
    now = start
    while now <= end:
        created += trigger.tick(now)
        now += step
    return created


@pytest.mark.django_db(transaction=True)
def test_a_new_schedule_fires_from_its_next_fire_time_with_the_job_it_describes(fresh):
    trigger = ScheduleTrigger([{**GOOD_SCHEDULE, "cron": "0 * * * *", "payload": {"report": "sales"},
                                "queue_name": "reports", "priority": 4, "max_retries": 1}])

    assert trigger.tick(utc(2030, 1, 1, 9, 30)) == []  # 09:00 passed before it started
    assert trigger.tick(utc(2030, 1, 1, 9, 59, 59)) == []
    (job,) = trigger.tick(utc(2030, 1, 1, 10, 0, 0, 400_000))

    assert (job.job_type, job.payload, job.queue_name, job.priority, job.max_retries) == (
        "test.noop", {"report": "sales"}, "reports", 4, 1)
    assert job.status is JobStatus.PENDING
    assert job.metadata == {"schedule": "nightly", "fire_at": "2030-01-01T10:00:00+00:00"}
    assert JobRecord.objects.get(id=job.id).status == "pending"
    start, fire = ScheduleFire.objects.order_by("fire_at")
    assert (start.schedule, start.fire_at, start.job_id) == ("nightly", utc(2030, 1, 1, 9), None)
    assert (fire.schedule, fire.fire_at, fire.job_id) == ("nightly", utc(2030, 1, 1, 10), job.id)
    assert trigger.tick(utc(2030, 1, 1, 10, 0, 30)) == []  # the same fire time again


@pytest.mark.django_db(transaction=True)
def test_a_trigger_made_afresh_for_every_tick_still_fires_a_new_schedule(fresh):
    # What a periodic task does: no state survives between ticks but the database's.
    schedule = [{**GOOD_SCHEDULE, "cron": "*/10 * * * *"}]
    created = []
    for minute in range(3, 33):
        created += ScheduleTrigger(schedule).tick(utc(2030, 1, 1, 12, minute))
    assert [job.metadata["fire_at"] for job in created] == [
        "2030-01-01T12:10:00+00:00", "2030-01-01T12:20:00+00:00", "2030-01-01T12:30:00+00:00"]


@pytest.mark.django_db(transaction=True)
def test_after_downtime_only_the_latest_missed_fire_gets_a_job(fresh, caplog):
    ScheduleFire.objects.create(schedule="nightly", fire_at=utc(2030, 1, 1, 10), job_id=UUID(int=1))
    trigger = ScheduleTrigger([{**GOOD_SCHEDULE, "cron": "0 * * * *"}])

    with caplog.at_level(logging.WARNING, logger="portico.scheduler"):
        created = trigger.tick(utc(2030, 1, 1, 15, 30))

    assert [job.metadata["fire_at"] for job in created] == ["2030-01-01T15:00:00+00:00"]
    assert fires_of("nightly") == [utc(2030, 1, 1, 10), utc(2030, 1, 1, 15)]
    assert "fire times from 2030-01-01T11:00:00+00:00" in caplog.text
    assert trigger.tick(utc(2030, 1, 1, 15, 59)) == []
    assert len(trigger.tick(utc(2030, 1, 1, 16))) == 1


@pytest.mark.django_db(transaction=True)
def test_a_restarted_trigger_carries_on_from_the_recorded_fires_without_repeating_one(fresh):
    schedule = [{**GOOD_SCHEDULE, "cron": "*/5 * * * *"}]
    first = ScheduleTrigger(schedule)
    first.tick(utc(2030, 1, 1, 12, 1))
    assert len(first.tick(utc(2030, 1, 1, 12, 5))) == 1

    again = ScheduleTrigger(schedule)
    assert again.tick(utc(2030, 1, 1, 12, 6)) == []
    assert len(again.tick(utc(2030, 1, 1, 12, 10))) == 1
    assert JobRecord.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_ticking_across_spring_forward_stores_each_days_fire_once_in_utc(fresh):
    trigger = ScheduleTrigger([{**GOOD_SCHEDULE, "timezone": "Europe/Berlin"}])
    created = tick_through(trigger, utc(2024, 3, 28, 12), utc(2024, 4, 2), timedelta(minutes=5))

    assert fires_of("nightly") == [utc(2024, 3, 29, 1, 30), utc(2024, 3, 30, 1, 30),
                                   utc(2024, 3, 31, 1, 0), utc(2024, 4, 1, 0, 30)]
    assert [job.metadata["fire_at"] for job in created] == [
        "2024-03-29T01:30:00+00:00", "2024-03-30T01:30:00+00:00",
        "2024-03-31T01:00:00+00:00", "2024-04-01T00:30:00+00:00"]


@pytest.mark.django_db(transaction=True)
def test_ticking_across_fall_back_runs_the_repeated_time_once(fresh):
    trigger = ScheduleTrigger([{**GOOD_SCHEDULE, "cron": "30 1 * * *", "timezone": "America/New_York"}])
    tick_through(trigger, utc(2024, 11, 2, 12), utc(2024, 11, 5), timedelta(minutes=5))

    assert fires_of("nightly") == [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]


@pytest.mark.django_db(transaction=True)
def test_one_failing_schedule_does_not_keep_the_others_from_their_jobs(fresh):
    trigger = ScheduleTrigger([{**GOOD_SCHEDULE, "name": "a", "cron": "* * * * *"},
                               {**GOOD_SCHEDULE, "name": "b", "cron": "* * * * *"}])
    trigger.tick(utc(2030, 1, 1, 12))
    # A payload validation would have refused at start, slipped in to make the enqueue fail.
    trigger.schedules[0] = Schedule(**{**GOOD_SCHEDULE, "name": "a", "cron": "* * * * *",
                                       "payload": {"bad": "\u0000"}})
    with pytest.raises(ValueError, match="NUL"):
        trigger.tick(utc(2030, 1, 1, 12, 1))
    assert fires_of("a") == [] and fires_of("b") == [utc(2030, 1, 1, 12, 1)]


@pytest.mark.django_db(transaction=True)
def test_old_fire_records_are_pruned_but_each_schedules_latest_is_kept(fresh):
    for name, hours_ago in [("a", 400), ("a", 300), ("a", 1), ("b", 500), ("b", 450)]:
        ScheduleFire.objects.create(schedule=name, fire_at=datetime.now(UTC) - timedelta(hours=hours_ago),
                                    job_id=UUID(int=hours_ago))
    deleted = ScheduleTrigger([GOOD_SCHEDULE]).prune_fires(timedelta(days=7))
    assert deleted == 3
    assert sorted(ScheduleFire.objects.values_list("schedule", "job_id")) == [
        ("a", UUID(int=1)), ("b", UUID(int=450))]


@pytest.mark.django_db(transaction=True)
def test_start_ticks_in_the_background_until_stop(fresh):
    # A fire recorded an hour ago: the first background tick catches up the current minute's.
    ScheduleFire.objects.create(schedule="every-minute", fire_at=datetime.now(UTC) - timedelta(hours=1),
                                job_id=UUID(int=1))
    trigger = ScheduleTrigger([{**GOOD_SCHEDULE, "name": "every-minute", "cron": "* * * * *"}], interval=0.05)
    assert not trigger.is_running

    asyncio.run(trigger.start())
    try:
        assert trigger.is_running
        deadline = time.monotonic() + 10
        while JobRecord.objects.count() == 0:
            assert time.monotonic() < deadline, "the background tick created no job within 10s"
            time.sleep(0.02)
    finally:
        started = time.monotonic()
        asyncio.run(trigger.stop())
    assert time.monotonic() - started < 2
    assert not trigger.is_running
    assert JobRecord.objects.count() == 1
    assert ScheduleFire.objects.filter(schedule="every-minute").count() == 2


def test_the_default_interval_is_at_most_one_second():
    assert 0 < ScheduleTrigger([]).interval <= 1


@pytest.mark.parametrize("interval", [0, -1, 1.5])
def test_an_interval_that_is_not_positive_or_longer_than_a_second_is_refused(interval):
    with pytest.raises(ScheduleError, match="at most 1 second"):
        ScheduleTrigger([], interval=interval)


# -- one job per fire time, however many schedulers ------------------------------------------


def _child_env() -> dict[str, str]:
    """The environment for a child process: this test's database and the test handlers."""
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    else:
        url = f"sqlite:///{db['NAME']}"
    return {**os.environ, "DATABASE_URL": url, "DJANGO_DEBUG": "1",
            "DJANGO_SETTINGS_MODULE": "tests.support.settings"}


RACING_SCHEDULER = """
import json, sys, time
from datetime import datetime, timedelta
from pathlib import Path
import django
django.setup()
from jobs.triggers import ScheduleTrigger

out, ready, me, others, fires, start = sys.argv[1:]
start = datetime.fromisoformat(start)
trigger = ScheduleTrigger([{"name": "race", "cron": "* * * * *", "job_type": "test.noop", "payload": {}}])
trigger.tick(start)  # a new schedule: it starts from its next fire time
Path(ready, me).touch()
deadline = time.monotonic() + 60
while len(list(Path(ready).iterdir())) < int(others):
    if time.monotonic() > deadline:
        sys.exit("the other schedulers never became ready")
    time.sleep(0.002)
created = []
for minute in range(1, int(fires) + 1):
    created += [str(job.id) for job in trigger.tick(start + timedelta(minutes=minute))]
Path(out).write_text(json.dumps({"created": created, "elsewhere": trigger.created_elsewhere}))
"""


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_scheduler_processes_ticking_the_same_fire_times_create_one_job_per_fire_time(empty_store, tmp_path):
    processes, fires = 2, 150
    ready = tmp_path / "ready"
    ready.mkdir()
    start = utc(2030, 6, 1, 8, 0, 30)
    children = [
        subprocess.Popen([sys.executable, "-c", RACING_SCHEDULER, str(tmp_path / f"out-{n}.json"), str(ready),
                          str(n), str(processes), str(fires), start.isoformat()],
                         env=_child_env(), cwd=PROJECT_ROOT)
        for n in range(processes)
    ]
    try:
        for child in children:
            assert child.wait(timeout=90) == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    results = [json.loads((tmp_path / f"out-{n}.json").read_text()) for n in range(processes)]
    created = [job_id for result in results for job_id in result["created"]]
    assert len(created) == len(set(created)) == fires
    # Every process tried every fire time; exactly one try of each won.
    assert [len(r["created"]) + r["elsewhere"] for r in results] == [fires] * processes
    expected = [start.replace(second=0) + n * MINUTE for n in range(1, fires + 1)]
    assert fires_of("race") == expected
    assert sorted(map(str, JobRecord.objects.values_list("id", flat=True))) == sorted(created)
    with_jobs = ScheduleFire.objects.filter(job_id__isnull=False).values_list("job_id", flat=True)
    assert sorted(map(str, with_jobs)) == sorted(created)


@pytest.fixture
def other_session():
    """A second, independent session on the test database (PostgreSQL)."""
    if connection.vendor != "postgresql":
        pytest.fail("this test needs PostgreSQL: set DATABASE_URL=postgres://...", pytrace=False)
    db = connection.settings_dict
    conn = psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"],
                           password=db["PASSWORD"] or None, dbname=db["NAME"])
    yield conn
    conn.close()


def _tick_in_thread(trigger: ScheduleTrigger, now: datetime, out: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            out.append(trigger.tick(now))
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_for_a_blocked_backend(conn: psycopg.Connection, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.execute("SELECT pg_stat_clear_snapshot()")  # the view is snapshotted per transaction
        if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()").fetchone()[0]:
            return
        time.sleep(0.01)
    raise AssertionError(f"no tick waited on the fire record within {timeout}s")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("outcome", "jobs_created"), [("rollback", 1), ("commit", 0)])
def test_a_tick_waits_for_another_scheduler_holding_the_same_fire_and_yields_only_if_it_commits(
        fresh, other_session, outcome, jobs_created):
    trigger = ScheduleTrigger([{**GOOD_SCHEDULE, "name": "held", "cron": "* * * * *"}])
    trigger.tick(utc(2030, 1, 1, 12, 0, 30))
    other_session.execute("INSERT INTO portico_schedule_fire (schedule, fire_at, job_id) "
                          "VALUES ('held', %s, gen_random_uuid())", [utc(2030, 1, 1, 12, 1)])
    out: list[Any] = []
    thread = _tick_in_thread(trigger, utc(2030, 1, 1, 12, 1, 10), out)
    try:
        _wait_for_a_blocked_backend(other_session)
    finally:
        getattr(other_session, outcome)()
        thread.join(timeout=30)

    assert [len(created) for created in out] == [jobs_created]
    assert JobRecord.objects.count() == jobs_created
    assert (trigger.created, trigger.created_elsewhere) == (jobs_created, 1 - jobs_created)


# -- manage.py portico_scheduler -----------------------------------------------------------


RUN_COMMAND = """
import json, sys
import django
from django.conf import settings
django.setup()
settings.PORTICO_SCHEDULES = json.loads(sys.argv[1])
from django.core.management import execute_from_command_line
execute_from_command_line(["manage.py", "portico_scheduler", "--interval", "0.05"])
"""


def _run_command(schedules: list[dict[str, Any]]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN_COMMAND, json.dumps(schedules)], env=_child_env(),
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_scheduler_command_creates_due_jobs_and_exits_0_on_sigterm(empty_store):
    ScheduleFire.objects.create(schedule="every-minute", fire_at=datetime.now(UTC) - timedelta(hours=1),
                                job_id=UUID(int=1))
    command = _run_command([{**GOOD_SCHEDULE, "name": "every-minute", "cron": "* * * * *"}])
    try:
        deadline = time.monotonic() + 30
        while not JobRecord.objects.exists():
            assert command.poll() is None, command.communicate()
            assert time.monotonic() < deadline, "the scheduler created no job within 30s"
            time.sleep(0.05)
        command.send_signal(signal.SIGTERM)
        _, stderr = command.communicate(timeout=15)
    finally:
        if command.poll() is None:
            command.kill()
            command.communicate()
    assert command.returncode == 0, stderr
    assert "scheduler started with 1 schedule(s): every-minute (* * * * * UTC)" in stderr
    assert "scheduler stopped: 1 job(s) created" in stderr
    assert JobRecord.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_scheduler_command_refuses_a_bad_schedule_with_exit_status_1():
    command = _run_command([{**GOOD_SCHEDULE, "timezone": "Mars/Olympus_Mons"}])
    try:
        _, stderr = command.communicate(timeout=60)
    finally:
        if command.poll() is None:
            command.kill()
            command.communicate()
    assert command.returncode == 1
    assert "CommandError: PORTICO_SCHEDULES[0] ('nightly'): unknown timezone 'Mars/Olympus_Mons'" in stderr


def test_expected_fires_helper_agrees_with_a_hand_checked_day():
    # The oracle itself, on the Berlin spring-forward day: 02:30 is jumped over, fired at 03:00.
    assert expected_fires({30}, {2}, "Europe/Berlin", utc(2024, 3, 30, 12), utc(2024, 3, 31, 12)) == [
        utc(2024, 3, 31, 1, 0)]
    assert date(2024, 3, 31) == utc(2024, 3, 31, 1).astimezone(ZoneInfo("Europe/Berlin")).date()
