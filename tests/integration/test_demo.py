"""portico_demo (seeding, live traffic, demo login) and the README's run command, scripts/run.sh."""
from __future__ import annotations

import http.cookiejar
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from io import StringIO
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError

from jobs import demo
from jobs.models import JobRecord
from jobs.queue import DatabaseJobQueueAdapter
from portico.ports.job import Job, JobStatus
from tests.conftest import PROJECT_ROOT
from tests.support.waiting import wait_for

STATES = [status.value for status in JobStatus]
db = pytest.mark.django_db(transaction=True)


def run_demo(*args: str) -> dict[str, dict[str, int]]:
    """Run portico_demo; the counts it reports seeding, by queue and state."""
    out = StringIO()
    call_command("portico_demo", *args, stdout=out, stderr=StringIO())
    seeded = {}
    for line in out.getvalue().splitlines():
        match = re.fullmatch(r"\s+(\w+)\s+((?:\w+=\d+\s*)+)", line)
        if match:
            seeded[match[1]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match[2])}
    return seeded


def counts(store: DatabaseJobQueueAdapter) -> dict[str, dict[str, int]]:
    """Every queue's count of each state, as the dashboard reads them (the counters)."""
    return {
        s.queue_name: {
            "pending": s.pending_count, "scheduled": s.scheduled_count, "running": s.running_count,
            "completed": s.completed_count, "failed": s.failed_count, "retrying": s.retrying_count,
            "dead_letter": s.dead_letter_count,
        }
        for s in store.get_all_queue_stats_sync()
    }


# -- seeding ---------------------------------------------------------------------------------


@db
def test_seeding_puts_jobs_in_all_seven_states_in_every_queue_it_names(store):
    seeded = run_demo("--seed", "1")
    assert sorted(seeded) == sorted(demo.QUEUES) == ["default", "emails", "payments", "reports", "webhooks"]
    for queue_name, by_state in seeded.items():
        assert sorted(by_state) == sorted(STATES)
        assert all(by_state[state] > 0 for state in STATES), (queue_name, by_state)
    assert counts(store) == seeded
    assert store.counter_drift_sync() == {}


@db
def test_seeded_jobs_carry_what_real_runs_leave_behind(store):
    run_demo("--seed", "2")
    running = JobRecord.objects.filter(status="running")
    assert running.exists() and all(r.lease_expires_at and r.started_at for r in running)
    completed = store.list_jobs_by_status_sync(JobStatus.COMPLETED)
    assert all(store.get_result_sync(job.id) for job in completed[:20])
    failed = store.list_jobs_by_status_sync(JobStatus.FAILED)
    assert "Job cancelled" in {job.error_message for job in failed}
    assert any(job.error_message.startswith("ValueError: invalid card number 4111-xxxx") for job in failed)
    retrying = store.list_jobs_by_status_sync(JobStatus.RETRYING)
    # Retried minutes from now, by the worker the demo runs beside.
    assert all(job.retry_count == 1 and job.scheduled_at is not None for job in retrying)
    pending = store.list_jobs_by_status_sync(JobStatus.PENDING)
    assert {job.job_type for job in pending} == set(demo.JOB_TYPES)


@db
def test_dead_letters_have_a_few_distinct_errors_several_jobs_each_and_every_attempt_recorded(store):
    run_demo("--seed", "3")
    dead = store.list_jobs_by_status_sync(JobStatus.DEAD_LETTER)
    # Grouped as the dead-letter page groups them: numbers normalized.
    by_error = Counter((job.queue_name, re.sub(r"\d+", "N", job.error_message)) for job in dead)
    for queue_name in demo.QUEUES:
        errors = {error: n for (queue, error), n in by_error.items() if queue == queue_name}
        assert len(errors) == 2, (queue_name, errors)
        assert all(n >= 3 for n in errors.values()), (queue_name, errors)
    assert "ConnectionError: SMTP server unavailable" in {error for _, error in by_error}
    for job in dead:
        assert job.retry_count == job.max_retries
        attempts = store.get_job_attempts_sync(job.id)
        assert [a.outcome for a in attempts] == ["retrying"] * job.max_retries + ["dead_letter"]
        assert {a.error_message for a in attempts} == {job.error_message}


@db
def test_reset_empties_the_job_store_before_seeding(store):
    other = store.enqueue_sync(Job(id=uuid4(), queue_name="elsewhere", job_type="other.job", payload={}))
    first = run_demo("--seed", "4")
    seeded = run_demo("--reset", "--seed", "5")
    assert store.get_job_sync(other.id) is None
    assert JobRecord.objects.count() == sum(sum(by_state.values()) for by_state in seeded.values())
    # Nothing left of the first seeding, nor of "elsewhere": its counts are all zero.
    now = counts(store)
    assert now.pop("elsewhere") == dict.fromkeys(STATES, 0)
    assert now == seeded
    assert store.counter_drift_sync() == {}
    # Lifetime totals keep counting across a reset, as they do across pruning.
    totals = {s.queue_name: s.enqueued_total for s in store.get_all_queue_stats_sync()}
    assert totals == {"elsewhere": 1, **{
        queue: sum(first[queue].values()) + sum(seeded[queue].values()) for queue in seeded}}


@db
def test_seeding_twice_without_reset_adds_a_second_set_and_keeps_the_counters_exact(store):
    first = run_demo("--seed", "6")
    second = run_demo("--seed", "7")
    # The first set's pending jobs were claimed past and released unrun: still pending.
    assert counts(store) == {
        queue: {state: first[queue][state] + second[queue][state] for state in STATES}
        for queue in demo.QUEUES
    }
    assert store.counter_drift_sync() == {}


@db
def test_reset_and_live_together_are_refused():
    with pytest.raises(CommandError, match="--reset"):
        call_command("portico_demo", "--reset", "--live", stdout=StringIO(), stderr=StringIO())


# -- the demo login --------------------------------------------------------------------------


@db
def test_the_demo_login_keeps_its_generated_password_and_joins_the_operator_group(tmp_path):
    Group.objects.get_or_create(name="operator")
    login_file = tmp_path / "login"
    call_command("portico_demo", "--reset", "--login-file", str(login_file), stdout=StringIO(),
                 stderr=StringIO())
    password = login_file.read_text().strip()
    assert len(password) >= 16 and login_file.stat().st_mode & 0o077 == 0
    call_command("portico_demo", "--reset", "--login-file", str(login_file), stdout=StringIO(),
                 stderr=StringIO())
    assert login_file.read_text().strip() == password
    user = get_user_model().objects.get(username="demo")
    assert user.check_password(password)
    assert user.groups.filter(name="operator").exists()
    assert user.is_staff and not user.is_superuser


@db
def test_without_an_operator_group_the_demo_login_is_a_superuser(tmp_path):
    Group.objects.filter(name="operator").delete()
    call_command("portico_demo", "--reset", "--login-file", str(tmp_path / "login"), stdout=StringIO(),
                 stderr=StringIO())
    user = get_user_model().objects.get(username="demo")
    assert user.is_superuser and user.is_staff
    assert user.check_password((tmp_path / "login").read_text().strip())


# -- handlers and live traffic -----------------------------------------------------------------


class FixedRoll(random.Random):
    """Every roll comes out the same, so a test picks the branch a handler takes."""

    def __init__(self, roll: float) -> None:
        super().__init__(0)
        self.roll = roll

    def random(self) -> float:
        return self.roll


def instant(handler: demo.DemoHandler, roll: float) -> demo.DemoHandler:
    handler.duration = (0.0, 0.0)
    handler.rng = FixedRoll(roll)
    return handler


def demo_job(handler: demo.DemoHandler, **payload: Any) -> Job:
    return Job(id=uuid4(), queue_name=handler.queue_name, job_type=handler.job_type,
               payload={**handler.payload(random.Random(0)), **payload})


async def test_a_payment_fails_one_run_in_five_and_a_bad_card_is_not_retried():
    handler = demo.ChargePayment()
    assert sum(f.rate for f in handler.failures) == pytest.approx(0.20)
    paid = await instant(handler, 0.5).handle(demo_job(handler))
    assert paid.success and paid.result_data["charge_id"].startswith("ch_")
    bad_card = await instant(handler, 0.0).handle(demo_job(handler, card_last4="0042"))
    assert not bad_card.success and bad_card.result_data == {"retry_recommended": False}
    assert str(bad_card.error) == "invalid card number 4111-xxxx-xxxx-0042"
    with pytest.raises(TimeoutError, match="upstream API timed out after 30s"):
        await instant(handler, 0.10).handle(demo_job(handler))


async def test_every_delivery_to_the_partner_that_is_down_fails_and_is_retried():
    handler = demo.DeliverWebhook()
    for roll in (0.0, 0.5, 0.999):
        with pytest.raises(ConnectionError, match="connection refused"):
            await instant(handler, roll).handle(demo_job(handler, endpoint=demo.DOWN_ENDPOINT))
    working = demo_job(handler, endpoint="https://hooks.example.com/orders")
    delivered = await instant(handler, 0.5).handle(working)
    assert delivered.success and delivered.result_data["status"] == 200


async def test_a_report_takes_between_one_and_five_seconds():
    assert demo.GenerateReport.duration == (1.0, 5.0)
    class Shortest(FixedRoll):
        def uniform(self, a: float, b: float) -> float:
            return a

    handler = demo.GenerateReport()
    handler.rng = Shortest(0.99)  # the shortest run, and no failure
    started = time.monotonic()
    result = await handler.handle(demo_job(handler))
    assert result.success and 1.0 <= time.monotonic() - started < 2.0


def test_portico_demo_1_registers_exactly_the_demo_handlers():
    probe = ("import django, json; django.setup(); from jobs.registry import get_handlers; "
             "print(json.dumps(sorted(get_handlers())))")

    def handlers(**env: str) -> list[str]:
        environment = {k: v for k, v in os.environ.items() if k != "PORTICO_DEMO"}
        done = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              env={**environment, "DJANGO_SETTINGS_MODULE": "portico_site.settings",
                                   "DJANGO_DEBUG": "1", **env}, timeout=60, check=True)
        return json.loads(done.stdout)

    assert handlers(PORTICO_DEMO="1") == sorted(demo.JOB_TYPES)
    assert not set(demo.JOB_TYPES) & set(handlers())
    assert demo.HANDLER_PATHS == tuple(f"jobs.demo.{cls.__name__}" for cls in demo.HANDLERS)


@db
def test_live_traffic_enqueues_bursts_across_the_queues_until_stopped(store):
    stop = threading.Event()
    bursts: list[list[Job]] = []

    def seen(jobs: list[Job]) -> None:
        bursts.append(jobs)
        if len(bursts) == 8:
            stop.set()

    total = demo.generate(store, stop, random.Random(8), interval=(0.0, 0.0), on_burst=seen)
    jobs = [job for burst in bursts for job in burst]
    assert total == len(jobs) == sum(s.enqueued_total for s in store.get_all_queue_stats_sync())
    assert {job.queue_name for job in jobs} == set(demo.QUEUES)
    assert any(job.status is JobStatus.SCHEDULED for job in jobs)
    assert any(job.status is JobStatus.PENDING for job in jobs)


@db
def test_live_traffic_skips_a_queue_whose_backlog_is_full(store, monkeypatch):
    monkeypatch.setattr(demo, "LIVE_BACKLOG_LIMIT", 3)
    stop = threading.Event()
    bursts = []

    def seen(jobs: list[Job]) -> None:
        bursts.append(jobs)
        if len(bursts) == 30:
            stop.set()

    demo.generate(store, stop, random.Random(9), interval=(0.0, 0.0), on_burst=seen)
    waiting = {s.queue_name: s.pending_count + s.scheduled_count for s in store.get_all_queue_stats_sync()}
    # A queue stops getting jobs once it holds 3; one burst adds at most 4.
    assert set(waiting) == set(demo.QUEUES)
    assert all(n < 3 + 4 for n in waiting.values()), waiting


# -- the run command -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_members(sid: int) -> list[str]:
    """Processes still in the session run.sh leads: "pid command" for each."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = stat.with_name("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        # The command name may hold spaces and parentheses: fields follow the last ")".
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(f"{stat.parent.name} {cmdline.strip()}")
    return members


class RunScript:
    """scripts/run.sh in a session of its own, its output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(["bash", "scripts/run.sh"], cwd=PROJECT_ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, url: str, opener: urllib.request.OpenerDirector | None = None) -> int:
        try:
            with (opener or urllib.request.build_opener()).open(url, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            assert self.process.poll() is None, f"run.sh exited early:\n{self.output}"
            return 0

    def stop(self, signum: int, timeout: float = 60) -> int:
        if signum == signal.SIGINT:
            # What Ctrl-C in a terminal does: signal the foreground process group.
            os.killpg(self.process.pid, signal.SIGINT)
        else:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"run.sh did not stop within {timeout}s:\n{self.output}") from None

    def kill_everything(self) -> None:
        """Whatever is left of the session, killed outright."""
        for member in session_members(self.process.pid):
            try:
                os.kill(int(member.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def sqlite_total(path: Path, name: str) -> int:
    """A lifetime total from the SQLite file the demo writes (read only)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
        row = conn.execute("SELECT COALESCE(SUM(value), 0) FROM portico_queue_counter WHERE name = ?",
                           [name]).fetchone()
    conn.close()
    return int(row[0])


def log_in(base: str, password: str) -> int:
    """Sign in through the login form; the status of the POST (302: signed in)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    with opener.open(f"{base}/accounts/login/", timeout=5) as response:
        form = response.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)[1]
    body = urllib.parse.urlencode({"username": "demo", "password": password, "csrfmiddlewaretoken": token})
    request = urllib.request.Request(f"{base}/accounts/login/", data=body.encode(),
                                     headers={"Referer": f"{base}/accounts/login/"})
    try:
        with opener.open(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def serve_and_stop(run: RunScript, port: int, sqlite_path: Path, demo_dir: Path, signum: int) -> None:
    """Check one run of the script from its first page to its stop by ``signum``."""
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: run.get(f"{base}/accounts/login/") == 200, 120, "the login page")
    password = (demo_dir / "login").read_text().strip()
    wait_for(lambda: f"demo / {password}" in run.output, 30, "the address and the login")
    assert f"==> Portico Jobs demo: {base}/" in run.output
    assert log_in(base, password) == 302

    # The worker runs the seeded jobs and the live traffic: the counts move.
    completed = sqlite_total(sqlite_path, "completed_total")
    enqueued = sqlite_total(sqlite_path, "enqueued_total")
    wait_for(lambda: sqlite_total(sqlite_path, "completed_total") >= completed + 20, 60,
             "the worker to complete demo jobs")
    wait_for(lambda: sqlite_total(sqlite_path, "enqueued_total") > enqueued, 30, "live traffic")

    assert run.stop(signum) == 0, run.output
    assert session_members(run.process.pid) == []
    assert "demo stopped" in run.output
    worker_log = (demo_dir / "worker.log").read_text()
    live_log = (demo_dir / "live.log").read_text()
    assert "portico_worker stopped" in worker_log
    assert "portico_demo --live stopped" in live_log
    for text in (run.output, worker_log, live_log):
        assert "database is locked" not in text
        assert "Traceback" not in text


def test_the_run_command_serves_the_demo_runs_its_jobs_and_stops_everything_on_a_signal(tmp_path):
    port = free_port()
    sqlite_path = tmp_path / "demo.sqlite3"
    demo_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PORTICO_DEMO")}
    env.update(PORT=str(port), PORTICO_SQLITE_PATH=str(sqlite_path), PORTICO_DEMO_DIR=str(demo_dir))

    runs: list[RunScript] = []
    try:
        runs.append(RunScript(env, tmp_path / "run-1.log"))
        serve_and_stop(runs[0], port, sqlite_path, demo_dir, signal.SIGTERM)
        # The second run finds the database, the user and the password there, and is
        # stopped the way Ctrl-C stops it.
        runs.append(RunScript(env, tmp_path / "run-2.log"))
        serve_and_stop(runs[1], port, sqlite_path, demo_dir, signal.SIGINT)
        assert "No migrations to apply" in runs[1].output
    finally:
        for run in runs:
            run.kill_everything()
