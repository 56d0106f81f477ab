"""GET /metrics: values after jobs went through every state, conventions, the token, consistency under load."""
from __future__ import annotations

import re
import subprocess
import threading
import time
from datetime import timedelta
from uuid import uuid4

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.db.models import F
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from jobs import metrics
from jobs.models import JobRecord
from jobs.queue import DatabaseJobQueueAdapter
from portico.ports.job import Job

pytestmark = pytest.mark.django_db(transaction=True)
QUEUE = "metrics-q"


@pytest.fixture
def store(empty_store):
    connection.cursor().execute("DELETE FROM portico_worker")
    adapter = DatabaseJobQueueAdapter(poll_interval=0.05)
    yield adapter
    adapter.close_sync()


def job(**fields) -> Job:
    values = {"id": uuid4(), "queue_name": QUEUE, "job_type": "test.job", "payload": {}}
    values.update(fields)
    return Job(**values)


def value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def shift(job_id, **deltas: timedelta) -> None:
    """Move a job's times back without changing its status (so no trigger counts it)."""
    JobRecord.objects.filter(id=job_id).update(**{f: F(f) - d for f, d in deltas.items()})


@pytest.fixture
def every_state(store):
    """One job in each of the seven statuses, with one 2 s run and one 45 s wait among them."""
    from datetime import UTC, datetime

    ids = {}
    for name, priority in (("completed", 60), ("retrying", 50), ("dead_letter", 40), ("failed", 30),
                           ("running", 20), ("pending", 0)):
        ids[name] = store.enqueue_sync(job(priority=priority, max_retries=0 if name == "dead_letter" else 3)).id
    ids["scheduled"] = store.enqueue_sync(job(scheduled_at=datetime.now(UTC) + timedelta(hours=1))).id
    shift(ids["completed"], run_at=timedelta(seconds=45))
    shift(ids["pending"], run_at=timedelta(seconds=120))

    claimed = [store.dequeue_sync(QUEUE) for _ in range(5)]
    assert [c.id for c in claimed] == [ids[n] for n in ("completed", "retrying", "dead_letter", "failed", "running")]
    shift(ids["completed"], started_at=timedelta(seconds=2))
    store.acknowledge_sync(ids["completed"], {"ok": True})
    store.reject_sync(ids["retrying"], True, "boom")
    store.reject_sync(ids["dead_letter"], True, "boom")
    store.reject_sync(ids["failed"], False, "boom")
    return ids


def test_every_family_has_its_value_after_jobs_went_through_every_state(every_state):
    for status in metrics.STATUSES:
        assert value("portico_jobs", queue=QUEUE, status=status) == 1, status
    assert value("portico_jobs_enqueued_total", queue=QUEUE) == 7
    assert value("portico_jobs_completed_total", queue=QUEUE) == 1
    assert value("portico_jobs_failed_total", queue=QUEUE) == 1
    assert value("portico_jobs_dead_lettered_total", queue=QUEUE) == 1
    assert value("portico_jobs_retried_total", queue=QUEUE) == 1
    # The seed's formula: (failed + dead letter) / (completed + failed + dead letter).
    assert value("portico_queue_failure_ratio", queue=QUEUE) == pytest.approx(2 / 3)
    # The pending job was due 120 s ago (the retrying one is due now, the scheduled one later).
    assert 119 <= value("portico_queue_oldest_job_age_seconds", queue=QUEUE) < 180
    assert value("portico_workers", queue=QUEUE) == 0


def test_the_histograms_count_each_run_and_each_claim_in_the_right_bucket(every_state):
    # Runs that ended: completed, retrying, dead letter, failed (the running one has not).
    assert value("portico_job_duration_seconds_count", queue=QUEUE) == 4
    assert value("portico_job_duration_seconds_bucket", queue=QUEUE, le="1.0") == 3
    assert value("portico_job_duration_seconds_bucket", queue=QUEUE, le="2.5") == 4
    assert value("portico_job_duration_seconds_bucket", queue=QUEUE, le="+Inf") == 4
    assert 2.0 <= value("portico_job_duration_seconds_sum", queue=QUEUE) < 3.0
    # Claims: five; one of them waited 45 s since it was due.
    assert value("portico_job_wait_seconds_count", queue=QUEUE) == 5
    assert value("portico_job_wait_seconds_bucket", queue=QUEUE, le="30.0") == 4
    assert value("portico_job_wait_seconds_bucket", queue=QUEUE, le="60.0") == 5
    assert 45.0 <= value("portico_job_wait_seconds_sum", queue=QUEUE) < 47.0
    buckets = [value("portico_job_wait_seconds_bucket", queue=QUEUE, le=le) for le in metrics._LE]
    assert buckets == sorted(buckets), "cumulative buckets never decrease"


def test_the_triggers_bucket_bounds_are_the_exported_ones():
    from importlib import import_module

    migration = import_module("jobs.migrations.0006_metrics")
    assert migration.BUCKETS == metrics.BUCKETS


def test_lifetime_totals_and_histograms_survive_pruning(every_state, store):
    shift(every_state["completed"], completed_at=timedelta(days=30))
    assert store.prune_sync(older_than=timedelta(days=7)) == 1
    assert value("portico_jobs", queue=QUEUE, status="completed") == 0
    assert value("portico_jobs_completed_total", queue=QUEUE) == 1
    assert value("portico_jobs_enqueued_total", queue=QUEUE) == 7
    assert value("portico_job_duration_seconds_count", queue=QUEUE) == 4


def test_a_requeued_dead_letter_job_moves_between_the_gauges(every_state, store):
    store.requeue_job_sync(every_state["dead_letter"])
    assert value("portico_jobs", queue=QUEUE, status="dead_letter") == 0
    assert value("portico_jobs", queue=QUEUE, status="pending") == 2
    assert value("portico_jobs_dead_lettered_total", queue=QUEUE) == 1


def test_live_workers_are_counted_per_queue_and_stale_ones_are_not(store):
    store.worker_seen_sync("host:1:a", "builtin", [QUEUE, "other"], "host", 1)
    store.worker_seen_sync("host:2:b", "celery", [QUEUE], "host", 2)
    store.worker_seen_sync("host:3:c", "builtin", [QUEUE], "host", 3)
    from jobs.models import WorkerRecord

    WorkerRecord.objects.filter(worker_id="host:3:c").update(
        last_seen_at=F("last_seen_at") - timedelta(seconds=store.lease_seconds + 5))
    assert value("portico_workers", queue=QUEUE) == 2
    assert value("portico_workers", queue="other") == 1
    # A queue with a worker and no job yet still gets every series, zero-filled.
    assert value("portico_jobs", queue="other", status="pending") == 0
    store.worker_gone_sync("host:1:a")
    assert value("portico_workers", queue=QUEUE) == 1
    assert value("portico_workers", queue="other") == 0


def test_the_series_are_bounded_by_queues_and_carry_no_job_data(store):
    queues = [f"bounded-{n}" for n in range(3)]
    secret = "s3cret-payload-value"
    jobs = [job(queue_name=queues[i % 3], job_type=f"type.{i}", payload={"v": secret},
                metadata={"user_id": str(uuid4())}, created_by=uuid4()) for i in range(10_000)]
    store.enqueue_many_sync(jobs)
    for queue in queues:
        for claimed in store.dequeue_many_sync(queue, 500):
            store.reject_sync(claimed.id, False, f"failed {claimed.id} {secret}")
    body = Client().get("/metrics").content.decode()
    assert secret not in body and "type.1" not in body
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", body), "no job or user id in any label"
    series = [line for line in body.splitlines() if line and not line.startswith("#")]
    per_queue = len(metrics.STATUSES) + 3 + len(metrics.TOTALS) + 2 * (len(metrics.BUCKETS) + 3)
    assert len(series) == per_queue * len(queues) + 1  # + the scrape duration
    labels = {name for line in series for name in re.findall(r'([a-z_]+)="', line)}
    assert labels == {"queue", "status", "le"}


@pytest.mark.postgres
def test_the_scrape_costs_a_few_statements_whatever_the_table_holds(store, django_assert_max_num_queries):
    store.enqueue_many_sync([job(queue_name=f"q{n % 20}") for n in range(2000)])
    with django_assert_max_num_queries(4) as captured:
        Client().get("/metrics")  # before any compaction: the delta rows are summed as they are
    assert not any("count(" in q["sql"].lower() and "portico_job " in q["sql"].lower()
                   for q in captured.captured_queries)


# -- the endpoint ------------------------------------------------------------------------


def test_the_endpoint_speaks_text_format_and_openmetrics_when_asked(every_state):
    plain = Client().get("/metrics")
    assert plain.status_code == 200
    assert plain["Content-Type"].startswith("text/plain; version=0.0.4")
    assert plain["Cache-Control"] == "no-store"
    parsed = {f.name: f for f in text_string_to_metric_families(plain.content.decode())}
    assert {"portico_jobs", "portico_job_duration_seconds", "portico_jobs_enqueued"} <= set(parsed)
    assert parsed["portico_job_wait_seconds"].type == "histogram"
    assert parsed["portico_jobs_completed"].type == "counter"
    open_metrics = Client().get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert open_metrics["Content-Type"].startswith("application/openmetrics-text")
    assert open_metrics.content.decode().rstrip().endswith("# EOF")
    assert Client().head("/metrics").status_code == 200
    assert Client().post("/metrics").status_code == 405


@override_settings(PORTICO_METRICS_TOKEN="metrics-token-0123456789")
def test_with_a_token_set_a_scrape_needs_it(store):
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics")["WWW-Authenticate"].startswith("Bearer")
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Basic metrics-token-0123456789").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer métrics").status_code == 401
    ok = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-0123456789")
    assert ok.status_code == 200 and b"portico_scrape_duration_seconds" in ok.content


def test_without_a_token_the_endpoint_is_open_and_the_deploy_check_warns(store, capsys):
    assert Client().get("/metrics").status_code == 200
    from jobs.checks import check_metrics_token

    assert [w.id for w in check_metrics_token()] == ["portico.W001"]
    with override_settings(PORTICO_METRICS_TOKEN="set"):
        assert check_metrics_token() == []
    from django.core.management.base import SystemCheckError

    with pytest.raises(SystemCheckError, match="portico.W001"):
        call_command("check", "--deploy", "--fail-level", "WARNING")


def test_an_unreadable_store_is_a_503_not_a_traceback(store, monkeypatch):
    from django.db import OperationalError

    def broken(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(DatabaseJobQueueAdapter, "counters_sync", broken)
    response = Client().get("/metrics")
    assert response.status_code == 503
    assert b"could not be read" in response.content


# -- consistency under load ----------------------------------------------------------------


def test_scrapes_during_heavy_load_are_consistent_snapshots(store):
    """Workers claim and complete while jobs arrive; every scrape adds up, and counters only grow."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(action) -> None:
        try:
            adapter = DatabaseJobQueueAdapter()
            while not stop.is_set():
                action(adapter)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connections.close_all()

    def produce(adapter) -> None:
        adapter.enqueue_many_sync([job() for _ in range(50)])

    def work(adapter) -> None:
        claimed = adapter.dequeue_many_sync(QUEUE, 20)
        if claimed:
            adapter.acknowledge_many_sync(claimed)
        else:
            time.sleep(0.005)

    threads = [threading.Thread(target=loop, args=(fn,)) for fn in (produce, work, work)]
    for thread in threads:
        thread.start()
    previous: dict[str, float] = {}
    scrapes = 0
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            body = Client().get("/metrics").content.decode()
            samples = {(s.name, s.labels.get("status"), s.labels.get("le")): s.value
                       for f in text_string_to_metric_families(body) for s in f.samples
                       if s.labels.get("queue") == QUEUE}
            if not samples:
                continue
            scrapes += 1
            statuses = sum(samples[("portico_jobs", s, None)] for s in metrics.STATUSES)
            enqueued = samples[("portico_jobs_enqueued_total", None, None)]
            completed = samples[("portico_jobs_completed_total", None, None)]
            assert statuses == enqueued, "every enqueued job is in exactly one status"
            assert samples[("portico_job_duration_seconds_count", None, None)] == completed
            running = samples[("portico_jobs", "running", None)]
            assert samples[("portico_job_wait_seconds_count", None, None)] == completed + running
            for key in ("portico_jobs_enqueued_total", "portico_jobs_completed_total"):
                assert samples[(key, None, None)] >= previous.get(key, 0), f"{key} went down"
                previous[key] = samples[(key, None, None)]
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert scrapes >= 20
    assert previous["portico_jobs_completed_total"] >= 1000, "the load was not heavy"


# -- promtool and a real Prometheus server -------------------------------------------------


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    import shutil

    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (apt-get install -y prometheus)",
                    pytrace=False)
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60)


@pytest.mark.postgres
def test_promtool_finds_nothing_to_complain_about_in_a_real_scrape(every_state):
    body = Client().get("/metrics").content.decode()
    checked = promtool("check", "metrics", stdin=body)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), \
        checked.stdout + checked.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.postgres
@override_settings(PORTICO_METRICS_TOKEN="scrape-token-for-the-test")
def test_a_real_prometheus_server_scrapes_the_app_and_answers_queries(every_state, live_server, tmp_path):
    import json
    import shutil
    import urllib.parse
    import urllib.request

    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: install Debian's prometheus package (apt-get install -y prometheus)",
                    pytrace=False)
    target = urllib.parse.urlsplit(live_server.url).netloc
    (tmp_path / "token").write_text("scrape-token-for-the-test")
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: portico
    metrics_path: /metrics
    authorization: {{credentials_file: {tmp_path / "token"}}}
    static_configs: [{{targets: ["{target}"]}}]
""")
    port = free_port()
    with open(tmp_path / "prometheus.log", "w") as log_file:
        server = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log_file)

    def query(expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)["data"]["result"]

    def wait_for(expr: str, expected: float, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = query(expr)
            except OSError:
                seen = "(server not answering yet)"
            else:
                if len(seen) == 1 and float(seen[0]["value"][1]) == expected:
                    return
            time.sleep(0.25)
        log = (tmp_path / "prometheus.log").read_text()[-3000:]
        pytest.fail(f"{expr} never became {expected}: last answer {seen}\nprometheus log:\n{log}")

    try:
        wait_for('up{job="portico"}', 1)
        wait_for(f'portico_jobs{{queue="{QUEUE}",status="dead_letter"}}', 1)
        wait_for(f'portico_jobs_enqueued_total{{queue="{QUEUE}"}}', 7)
        wait_for(f'portico_job_duration_seconds_count{{queue="{QUEUE}"}}', 4)
        wait_for(f'histogram_quantile(1, sum by (le) (portico_job_wait_seconds_bucket{{queue="{QUEUE}"}})) > 30', 60)
        statuses = query(f'portico_jobs{{queue="{QUEUE}"}}')
        assert sorted(s["metric"]["status"] for s in statuses) == sorted(metrics.STATUSES)
        # A scrape without the token is refused: Prometheus itself would mark the target down.
        assert Client().get("/metrics").status_code == 401
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_the_fast_renderer_writes_what_prometheus_client_writes(openmetrics):
    """render() is the view's encoder; prometheus_client's own over the collector must agree byte for byte."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    odd = 'we"ird\\queue\nname ünï'
    snapshot = metrics.Snapshot(
        counters={
            "default": {"pending": 3, "completed": 10**17, "failed": 1, "dead_letter": 2, "enqueued_total": 7,
                        "duration:0": 2, "duration:5": 1, "duration:16": 4, "duration:sum_us": 1_234_567,
                        "wait:3": 9, "wait:sum_us": 1},
            odd: {"running": 1, "retried_total": 5},
        },
        oldest_ages={"default": 12.5},
        workers={"default": 2, "idle-queue": 1},
    )

    class Fixed:
        def collect(self):
            yield from metrics.families(snapshot)
            from prometheus_client.metrics_core import GaugeMetricFamily

            yield GaugeMetricFamily("portico_scrape_duration_seconds",
                                    metrics.FAMILIES["portico_scrape_duration_seconds"][1], value=0.0123,
                                    unit="seconds")

    registry = CollectorRegistry()
    registry.register(Fixed())
    expected = (generate_openmetrics if openmetrics else generate_latest)(registry)
    assert metrics.render(snapshot, 0.0123, openmetrics=openmetrics) == expected
