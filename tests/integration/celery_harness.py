"""What the Celery tests share: the two real brokers, worker and beat processes, and the execution log."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import kombu.pools
import pytest
import redis
from celery import Celery
from django.db import connection
from kombu import Connection

from portico.ports.job import Job
from scripts.check_services import SERVICES, is_reachable

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# A database of its own, flushed before and after each test (the benchmark uses 14 and 15).
REDIS_URL = "redis://127.0.0.1:6379/12"
# A virtual host of its own, created for the run and deleted after it.
RABBITMQ_VHOST = "portico_celery_tests"
RABBITMQ_URL = f"amqp://guest:guest@127.0.0.1:5672/{RABBITMQ_VHOST}"
# Every Celery queue the tests send to; RabbitMQ queues are deleted between tests.
CELERY_QUEUES = ("portico.default", "portico.other", "portico.maintenance")


def require_service(name: str) -> None:
    """Fail, naming the command that starts it, when a service the test needs is down."""
    service = next(s for s in SERVICES if s.name == name)
    if not is_reachable(service.host, service.port):
        pytest.fail(
            f"{service.name} is not reachable at {service.host}:{service.port}.\n"
            f"Start it with: {service.start_command}",
            pytrace=False,
        )


def _rabbitmqctl(*args: str, check: bool = True) -> None:
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        pytest.fail(f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}",
                    pytrace=False)


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    require_service("RabbitMQ")
    _rabbitmqctl("delete_vhost", RABBITMQ_VHOST, check=False)  # left over by a killed run
    _rabbitmqctl("add_vhost", RABBITMQ_VHOST)
    _rabbitmqctl("set_permissions", "-p", RABBITMQ_VHOST, "guest", ".*", ".*", ".*")
    yield RABBITMQ_VHOST
    _rabbitmqctl("delete_vhost", RABBITMQ_VHOST, check=False)


@dataclass
class Broker:
    """A real broker the test owns, and the broker-side view of its Celery queues."""

    name: str
    url: str

    def waiting(self, queue: str) -> int:
        """Messages waiting in a Celery queue (not those a worker has taken)."""
        if self.name == "redis":
            client = redis.Redis.from_url(self.url)
            try:
                # Celery's Redis transport keeps one list per priority step beside the plain one.
                keys = [queue] + [f"{queue}\x06\x16{step}" for step in (3, 6, 9)]
                return sum(client.llen(key) for key in keys)
            finally:
                client.close()
        with Connection(self.url) as conn, conn.channel() as channel:
            try:
                return channel.queue_declare(queue, passive=True).message_count
            except Exception:  # noqa: BLE001 - NOT_FOUND: nothing ever declared it
                return 0

    def purge(self, queue: str) -> None:
        if self.name == "redis":
            client = redis.Redis.from_url(self.url)
            try:
                client.delete(queue, *[f"{queue}\x06\x16{step}" for step in (3, 6, 9)])
            finally:
                client.close()
            return
        with Connection(self.url) as conn, conn.channel() as channel:
            channel.queue_purge(queue)

    def reset(self) -> None:
        if self.name == "redis":
            client = redis.Redis.from_url(self.url)
            try:
                client.flushdb()
            finally:
                client.close()
            return
        for queue in CELERY_QUEUES:
            with Connection(self.url) as conn, conn.channel() as channel:
                try:
                    channel.queue_delete(queue)
                except Exception:  # noqa: BLE001 - not declared in this test
                    pass


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """Each broker in turn, emptied before and after the test."""
    if request.param == "redis":
        require_service("Redis")
        found = Broker("redis", REDIS_URL)
    else:
        request.getfixturevalue("rabbitmq_vhost")
        found = Broker("rabbitmq", RABBITMQ_URL)
    found.reset()
    yield found
    found.reset()


@pytest.fixture
def celery_app(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """The project's Celery configuration on the test's broker, as this process's app."""
    from portico_site.celery import app as project_app

    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # it would win over any setting
    app = Celery("portico_site", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.broker_url = broker.url
    app.set_current()
    app.set_default()
    try:
        yield app
    finally:
        project_app.set_current()
        project_app.set_default()
        # Connections are pooled per broker URL process-wide: close them, and forget the
        # pools, so the next test (same URL, new app) starts afresh.
        kombu.pools.reset()


@pytest.fixture
def dispatch_on_commit(settings, celery_app: Celery) -> Celery:
    """Enqueues in this process ring doorbells on the test's broker, as PORTICO_DISPATCH=celery does."""
    settings.PORTICO_DISPATCH = "jobs.dispatch.ring"
    return celery_app


def child_env(broker: Broker) -> dict[str, str]:
    """The environment of a worker or beat process: this test's database and broker."""
    db = connection.settings_dict
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "DJANGO_SETTINGS_MODULE": "tests.support.settings",
        "DJANGO_DEBUG": "1",
        "DJANGO_SECRET_KEY": "celery-test-key",
        "CELERY_BROKER_URL": broker.url,
        "PORTICO_DISPATCH": "celery",
        "PYTHONPATH": str(PROJECT_ROOT),
    }


class CeleryProcess:
    """A `celery -A portico_site ...` process in a session (and process group) of its own."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "portico_site", *args],
                cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None:
                raise AssertionError(f"celery {' '.join(self.args)} exited:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from celery within {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole group, the main process and its pool children alike."""
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_alive(self.process.pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"celery {' '.join(self.args)} outlived SIGKILL")
            time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting to be reaped do not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class CeleryCluster:
    """Celery workers and beat on the test's database and broker, each logging to a file."""

    def __init__(self, broker: Broker, log_dir: Path) -> None:
        self.broker = broker
        self.log_dir = log_dir
        self.started: list[CeleryProcess] = []

    def worker(self, concurrency: int = 1,
               queues: str = "portico.default,portico.maintenance") -> CeleryProcess:
        """Start a prefork worker and wait until it consumes."""
        n = len(self.started)
        worker = CeleryProcess(
            ["worker", "-Q", queues, "-c", str(concurrency), "-n", f"test{n}@%h", "-l", "info",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            child_env(self.broker), self.log_dir / f"worker{n}.log",
        )
        self.started.append(worker)
        worker.wait_for_log(" ready.")
        return worker

    def beat(self) -> CeleryProcess:
        """Start beat and wait until it has sent its first sweep."""
        beat = CeleryProcess(
            ["beat", "-l", "info", "-s", str(self.log_dir / "beat-schedule"), "--pidfile="],
            child_env(self.broker), self.log_dir / "beat.log",
        )
        self.started.append(beat)
        beat.wait_for_log("Sending due task portico-sweep")
        return beat

    def kill_all(self) -> None:
        for process in self.started:
            process.kill()


@pytest.fixture
def cluster(broker: Broker, no_executions, tmp_path: Path) -> Iterator[CeleryCluster]:
    """Start Celery processes for the test; every one is killed at teardown."""
    cluster = CeleryCluster(broker, tmp_path)
    try:
        yield cluster
    finally:
        cluster.kill_all()


def make_jobs(count: int = 1, job_type: str = "test.record", **fields: Any) -> list[Job]:
    values = {"queue_name": "default", "payload": {}, **fields}
    return [Job(id=uuid4(), job_type=job_type, **values) for _ in range(count)]


def executions(job_ids: list[UUID] | None = None) -> list[tuple[UUID, int, int, Any]]:
    """(job id, retry count, pid, time) of each run that reached a test handler, in order."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('test_execution')")
        if cursor.fetchone()[0] is None:
            return []
        cursor.execute("SELECT job_id, retry_count, pid, at FROM test_execution ORDER BY at")
        rows = cursor.fetchall()
    wanted = None if job_ids is None else set(job_ids)
    return [row for row in rows if wanted is None or row[0] in wanted]


@pytest.fixture
def no_executions(empty_store) -> None:
    """test_execution outlives the test database's flushes: empty it for this test."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('test_execution')")
        if cursor.fetchone()[0] is not None:
            cursor.execute("DELETE FROM test_execution")


def eventually(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "the condition") -> Any:
    """Poll until predicate returns something true; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)
