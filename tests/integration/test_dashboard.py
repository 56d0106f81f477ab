"""The ops dashboard through Django's test client on real PostgreSQL: access, CSRF, escaping, pages, actions, admin."""
from __future__ import annotations

import importlib
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern

from jobs import maintenance, operations, queries, services
from jobs.models import AuditEntry, JobAttemptRecord, JobRecord, QueueSample
from jobs.queue import DatabaseJobQueueAdapter
from jobs.urls import urlpatterns
from jobs.views import display
from jobs.views.pages import queue_url
from portico.ports.job import Job, QueueStats

pytestmark = pytest.mark.django_db

ROLES = importlib.import_module("jobs.migrations.0004_dashboard")
XSS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "</script><script>alert(1)</script>",
    "javascript:alert(1)",
    "{{7*7}}",
]


# -- building jobs through the queue's own operations -----------------------------------------


def build_job(queue: DatabaseJobQueueAdapter, status: str = "pending", *, queue_name: str = "default",
              job_type: str = "test.job", payload: dict[str, Any] | None = None,
              metadata: dict[str, Any] | None = None, error: str = "ValueError: boom",
              result: dict[str, Any] | None = None, max_retries: int = 0) -> UUID:
    """Enqueue a job and drive it to ``status`` with the adapter's real operations.

    A job that must be claimed has to be the only due job of its queue at that moment:
    create waiting jobs last.
    """
    scheduled = datetime.now(UTC) + timedelta(hours=1) if status == "scheduled" else None
    retries = max(1, max_retries) if status == "retrying" else max_retries
    job = Job(id=uuid4(), queue_name=queue_name, job_type=job_type, payload=payload or {},
              metadata=metadata or {}, max_retries=retries, scheduled_at=scheduled)
    queue.enqueue_sync(job)
    if status in ("pending", "scheduled"):
        return job.id
    claimed = queue.dequeue_many_sync(queue_name, 1)
    assert [c.id for c in claimed] == [job.id], "another job was claimed: create waiting jobs last"
    claim = claimed[0]
    if status == "completed":
        queue.acknowledge_sync(job.id, result if result is not None else {"ok": True}, claim=claim)
    elif status == "failed":
        queue.reject_sync(job.id, requeue=False, error_message=error, claim=claim)
    elif status == "dead_letter":
        queue.reject_sync(job.id, requeue=True, error_message=error, claim=claim)
    elif status == "retrying":
        queue.reject_sync(job.id, requeue=True, error_message=error, claim=claim, delay=3600)
    else:
        assert status == "running", status
    return job.id


@pytest.fixture
def queue() -> DatabaseJobQueueAdapter:
    return services.job_queue()


@pytest.fixture
def make_job(queue):
    def make(status: str = "pending", **fields: Any) -> UUID:
        return build_job(queue, status, **fields)

    return make


def status_of(job_id: UUID) -> str | None:
    return JobRecord.objects.filter(id=job_id).values_list("status", flat=True).first()


# -- who is asking ----------------------------------------------------------------------------


def ensure_roles() -> None:
    """The groups the migration creates (a transactional test's flush removes them)."""
    ROLES.create_roles(django_apps, None)


def user_in(role: str | None, *, staff: bool = False) -> User:
    ensure_roles()
    user = User.objects.create_user(f"{role or 'nobody'}-{uuid4().hex[:6]}", password="pw", is_staff=staff)
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


def client_for(user: User | None, **options: Any) -> Client:
    client = Client(**options)
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def viewer() -> Client:
    return client_for(user_in("viewer"))


@pytest.fixture
def operator() -> Client:
    return client_for(user_in("operator"))


@pytest.fixture
def world(make_job) -> dict[str, Any]:
    """A little of everything: a job in each state, and an action over a filter already run."""
    ids = {status: make_job(status, queue_name="default")
           for status in ("completed", "failed", "dead_letter", "retrying", "running")}
    ids["pending"] = make_job("pending", queue_name="default")
    ids["scheduled"] = make_job("scheduled", queue_name="default")
    entry = AuditEntry.objects.create(actor_name="someone", action="requeue", source="dashboard",
                                      scope="filter", filter={"status": "dead_letter", "upto_seq": 1},
                                      requested=0)
    return {"ids": ids, "entry": entry}


def pages(world: dict[str, Any]) -> dict[str, str]:
    ids = world["ids"]
    return {
        "overview": "/",
        "queue": "/queues/default/",
        "job": f"/jobs/{ids['dead_letter']}/",
        "dead-letter": "/dead-letter/",
        "audit": "/audit/",
        "bulk-progress": f"/dead-letter/bulk/{world['entry'].pk}/",
    }


def actions(world: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each action URL with a POST body that would change something for an operator."""
    ids = world["ids"]
    return {
        "job-requeue": (f"/jobs/{ids['dead_letter']}/requeue/", {}),
        "job-cancel": (f"/jobs/{ids['pending']}/cancel/", {}),
        "job-discard": (f"/jobs/{ids['failed']}/discard/", {"confirm": "discard"}),
        "chosen-jobs": ("/dead-letter/chosen/", {"action": "requeue", "job": [str(ids["dead_letter"])]}),
        "bulk-start": ("/dead-letter/bulk/", {"action": "requeue", "status": "dead_letter"}),
    }


# Operator-only pages: the preview is the first step of an action.
OPERATOR_PAGES = {"bulk-preview": "/dead-letter/bulk/preview/?action=requeue&status=dead_letter"}


# -- access -----------------------------------------------------------------------------------


def test_every_url_of_the_app_is_in_the_access_tests_except_the_token_protected_ones(world):
    """The webhook and /metrics answer machines by bearer token (tests/integration/test_webhook.py, test_metrics.py)."""
    names = {p.name for p in urlpatterns if isinstance(p, URLPattern)}
    covered = set(pages(world)) | set(actions(world)) | set(OPERATOR_PAGES) | {"webhook-create-job", "metrics"}
    assert names == covered


def test_every_page_sends_an_anonymous_visitor_to_the_login_page(world):
    anonymous = Client()
    for name, url in {**pages(world), **OPERATOR_PAGES}.items():
        response = anonymous.get(url)
        assert response.status_code == 302, name
        assert response["Location"].startswith("/accounts/login/?next="), name


def test_an_anonymous_htmx_poll_is_redirected_as_a_whole_page_not_swapped_in(world):
    response = Client().get("/", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert response["HX-Redirect"].startswith("/accounts/login/?next=")


def test_every_action_sends_an_anonymous_visitor_to_the_login_page_and_changes_nothing(world):
    before = dict(JobRecord.objects.values_list("id", "status"))
    for name, (url, body) in actions(world).items():
        response = Client().post(url, body)
        assert response.status_code == 302, name
        assert response["Location"].startswith("/accounts/login/"), name
    assert dict(JobRecord.objects.values_list("id", "status")) == before
    assert not AuditEntry.objects.exclude(pk=world["entry"].pk).exists()


def test_a_viewer_sees_every_page(world, viewer):
    for name, url in pages(world).items():
        assert viewer.get(url).status_code == 200, name


def test_a_viewer_gets_403_on_every_action_and_changes_nothing(world, viewer):
    before = dict(JobRecord.objects.values_list("id", "status"))
    for name, (url, body) in actions(world).items():
        assert viewer.post(url, body).status_code == 403, name
    for name, url in OPERATOR_PAGES.items():
        assert viewer.get(url).status_code == 403, name
    assert dict(JobRecord.objects.values_list("id", "status")) == before
    assert not AuditEntry.objects.exclude(pk=world["entry"].pk).exists()


def test_a_viewer_sees_no_action_buttons(world, viewer):
    page = viewer.get(f"/jobs/{world['ids']['dead_letter']}/").content.decode()
    assert "/requeue/" not in page and "/discard/" not in page
    assert "Requeue chosen" not in viewer.get("/dead-letter/").content.decode()


def test_a_signed_in_user_without_a_role_is_refused_every_page(world):
    nobody = client_for(user_in(None))
    for name, url in pages(world).items():
        assert nobody.get(url).status_code == 403, name


def test_an_operator_sees_every_page_and_may_act(world, operator):
    for name, url in {**pages(world), **OPERATOR_PAGES}.items():
        assert operator.get(url).status_code == 200, name
    ids = world["ids"]
    assert operator.post(f"/jobs/{ids['dead_letter']}/requeue/").status_code == 303
    assert status_of(ids["dead_letter"]) == "pending"


def test_get_on_any_action_url_is_405(world, operator):
    for name, (url, _) in actions(world).items():
        assert operator.get(url).status_code == 405, name


def test_a_post_without_the_csrf_token_is_refused_and_one_with_it_goes_through(world):
    strict = client_for(user_in("operator"), enforce_csrf_checks=True)
    for name, (url, body) in actions(world).items():
        assert strict.post(url, body).status_code == 403, name
    assert status_of(world["ids"]["dead_letter"]) == "dead_letter"

    # The token as htmx sends it: the X-CSRFToken header from hx-headers on <body>.
    page = strict.get("/dead-letter/").content.decode()
    token = re.search(r'hx-headers=\'\{"X-CSRFToken": "([^"]+)"\}\'', page).group(1)
    url, _ = actions(world)["job-requeue"]
    response = strict.post(url, {}, headers={"X-CSRFToken": token})
    assert response.status_code == 303
    assert status_of(world["ids"]["dead_letter"]) == "pending"


def test_malformed_and_unknown_ids_are_404_never_500(world, operator):
    job_id = world["ids"]["dead_letter"]
    for url in ("/jobs/not-a-uuid/", "/jobs/12345/", f"/jobs/{job_id}x/", f"/jobs/{uuid4()}/",
                "/queues/no-such-queue/", "/dead-letter/bulk/999999/", "/dead-letter/bulk/abc/"):
        assert operator.get(url).status_code == 404, url
    for url in (f"/jobs/{uuid4()}/requeue/", "/jobs/not-a-uuid/requeue/", f"/jobs/{uuid4()}/cancel/"):
        assert operator.post(url).status_code == 404, url
    # An id in capitals is still that job.
    assert operator.get(f"/jobs/{str(job_id).upper()}/").status_code == 200
    assert operator.post("/dead-letter/chosen/", {"action": "requeue", "job": ["nope"]}).status_code == 400


def test_every_page_has_a_strict_content_security_policy_and_no_inline_script_or_style(world, operator):
    for name, url in {**pages(world), **OPERATOR_PAGES}.items():
        response = operator.get(url)
        policy = response["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "style-src 'self'" in policy, name
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, name
        html = response.content.decode()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), name
        assert not re.search(r"\sstyle=", html), name
        assert not re.search(r"\son[a-z]+=", html), name
        assert '"allowEval": false' in html and '"includeIndicatorStyles": false' in html, name


def test_the_migration_creates_the_operator_and_viewer_groups_with_their_permissions():
    operator_perms = set(Group.objects.get(name="operator").permissions.values_list("codename", flat=True))
    viewer_perms = set(Group.objects.get(name="viewer").permissions.values_list("codename", flat=True))
    assert {"operate_jobs", "view_jobrecord", "view_auditentry"} <= operator_perms
    assert {"view_jobrecord", "view_auditentry"} <= viewer_perms
    assert "operate_jobs" not in viewer_perms


# -- escaping ---------------------------------------------------------------------------------


def escaped(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#x27;"))


def assert_inert(html: str, where: str) -> None:
    """Every hostile string is escaped where it has markup, and never lands in a URL attribute."""
    for text in XSS:
        if escaped(text) != text:
            assert text not in html, f"{text!r} raw in {where}"
        assert not re.search(r'(?:href|src|action)="\s*' + re.escape(escaped(text)), html), where
    for tag in re.findall(r"<script[^>]*>", html):
        assert re.search(r'\bsrc="/', tag), where  # this site's own files only


def test_hostile_job_data_is_rendered_escaped_on_every_page(make_job, operator):
    staff = client_for(user_in("operator", staff=True))
    hostile = {f"k{i}": text for i, text in enumerate(XSS)}
    queue_name = '"><img src=x onerror=alert(1)>'
    ids = [make_job("dead_letter", queue_name=queue_name, job_type=text, payload={**hostile, "nested": [text]},
                    metadata={"note": text, text: "as a key"}, error=f"{text} then {XSS[0]}")
           for text in XSS]
    operator.get("/")  # records this minute's sample
    group = queries.failure_groups(queries.FailureFilter(queue=queue_name)).groups[0]
    seen = {
        "overview": operator.get("/"),
        "overview partial": operator.get("/", headers={"HX-Request": "true"}),
        "queue": operator.get(queue_url(queue_name)),
        "queue by type": operator.get(queue_url(queue_name, type=XSS[0])),
        "dead letter": operator.get("/dead-letter/"),
        "dead letter group": operator.get("/dead-letter/", {"queue": queue_name, "job_type": group.job_type,
                                                            "group": group.key}),
        "preview": operator.get("/dead-letter/bulk/preview/", {"action": "discard", "queue": queue_name}),
        "admin list": staff.get("/admin/jobs/jobrecord/"),
    }
    for job_id in ids:
        seen[f"job {job_id}"] = operator.get(f"/jobs/{job_id}/")
        seq = JobRecord.objects.get(id=job_id).seq
        seen[f"admin job {job_id}"] = staff.get(f"/admin/jobs/jobrecord/{seq}/change/")
    for where, response in seen.items():
        assert response.status_code == 200, where
        assert_inert(response.content.decode(), where)

    job_page = seen[f"job {ids[0]}"].content.decode()
    assert escaped(XSS[0]) in job_page  # the job type, payload values and error, escaped
    assert escaped(json_text(XSS[2])) in job_page  # inside the JSON block too
    assert "{{7*7}}" in seen[f"job {ids[4]}"].content.decode()  # shown as text, never evaluated
    assert escaped(queue_name) in seen["overview"].content.decode()

    # The row an action sends back is escaped as well.
    row = operator.post(f"/jobs/{ids[1]}/requeue/", {"row": "dead_letter", "queue": queue_name},
                        headers={"HX-Request": "true"})
    assert row.status_code == 200
    assert_inert(row.content.decode(), "requeued row")


def json_text(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


# -- overview ---------------------------------------------------------------------------------


def test_the_overview_shows_the_seven_counts_of_each_queue_and_a_totals_row(make_job, viewer):
    for status in ("completed", "completed", "failed", "dead_letter", "running", "retrying"):
        make_job(status, queue_name="mail")
    make_job("completed", queue_name="reports")
    make_job("pending", queue_name="mail")
    make_job("scheduled", queue_name="reports")
    html = viewer.get("/").content.decode()

    def cells(queue_name: str) -> dict[str, str]:
        row = re.search(rf'<tr [^>]*data-queue="{queue_name}">(.*?)</tr>', html, re.DOTALL).group(1)
        return dict(re.findall(r'data-status="(\w+)"><a [^>]*>([\d,]+)</a>', row))

    assert cells("mail") == {"pending": "1", "scheduled": "0", "retrying": "1", "running": "1",
                             "completed": "2", "failed": "1", "dead_letter": "1"}
    assert cells("reports")["completed"] == "1" and cells("reports")["scheduled"] == "1"
    totals = re.search(r'<tr class="totals">(.*?)</tr>', html, re.DOTALL).group(1)
    assert dict(re.findall(r'data-status="(\w+)">([\d,]+)<', totals))["completed"] == "3"
    assert "50.0%" in html  # mail: (1 failed + 1 dead) / 4 processed


def test_the_overview_shows_live_workers_and_a_heartbeat_clears_the_no_worker_alarm(make_job, viewer):
    from django.utils import timezone

    from jobs.models import WorkerRecord

    WorkerRecord.objects.all().delete()
    make_job("pending", queue_name="idle-q")
    JobRecord.objects.filter(queue_name="idle-q").update(run_at=timezone.now() - timedelta(minutes=5))

    def row(queue_name: str) -> str:
        html = viewer.get("/").content.decode()
        return re.search(rf'<tr [^>]*data-queue="{queue_name}">(.*?)</tr>', html, re.DOTALL).group(1)

    assert re.search(r'class="num workers">0<', row("idle-q"))
    assert "no active worker" in row("idle-q")
    store = DatabaseJobQueueAdapter()
    store.worker_seen_sync("host:1:x", "builtin", ["idle-q"], "host", 1)
    store.worker_seen_sync("host:2:y", "celery", ["idle-q", "other"], "host", 2)
    assert re.search(r'class="num workers">2<', row("idle-q"))
    assert "no active worker" not in row("idle-q")
    # A worker's queue is listed even before its first job.
    assert re.search(r'class="num workers">1<', row("other"))
    WorkerRecord.objects.all().delete()


def test_the_overview_and_its_live_partial_never_count_the_job_table(make_job, viewer):
    for status in ("completed", "failed", "dead_letter"):
        make_job(status, queue_name="q1")
    make_job("pending", queue_name="q1")
    for headers in ({}, {"HX-Request": "true"}):
        with CaptureQueriesContext(connection) as captured:
            response = viewer.get("/", headers=headers)
        assert response.status_code == 200
        for query in captured.captured_queries:
            sql = query["sql"].lower()
            assert not (re.search(r"count\s*\(", sql) and re.search(r"\bportico_job\b", sql)), sql


def test_the_live_partial_is_the_table_alone_and_polls_every_two_seconds_with_a_real_url(make_job, viewer):
    make_job("pending", queue_name="q1")
    page = viewer.get("/").content.decode()
    partial = viewer.get("/", headers={"HX-Request": "true"}).content.decode()
    assert "<html" in page and "<html" not in partial
    assert partial.strip().startswith('<section id="queue-table"')
    assert 'hx-get="/"' in partial and 'hx-trigger="every 2s, portico:visible from:body"' in partial
    assert "data-poll" in partial  # paused by dashboard.js while the tab is hidden


def stats(**counts: Any) -> QueueStats:
    values = {"queue_name": "q", "pending_count": 0, "running_count": 0, "completed_count": 0,
              "failed_count": 0, "dead_letter_count": 0}
    return QueueStats(**{**values, **counts})


def test_health_badges_follow_the_seeds_monitoring_rules():
    levels = lambda s, seen=True: [b.level for b in display.health(s, worker_seen=seen, stall_seconds=30)]
    assert levels(stats(completed_count=50)) == []
    assert levels(stats(pending_count=1001, running_count=1)) == ["warning"]
    assert levels(stats(pending_count=1000, running_count=1)) == []
    assert levels(stats(dead_letter_count=1)) == ["error"]
    assert levels(stats(completed_count=95, failed_count=6)) == ["warning"]  # 5.9% of 101
    assert levels(stats(completed_count=90, failed_count=10)) == []  # 10% of only 100
    # Pending with nothing running: critical once the oldest due job waited past the stall time
    # and no job of the queue finished lately; a fresh job or a worker seen finishing is fine.
    assert levels(stats(pending_count=5, latency_seconds=31.0), seen=False) == ["critical"]
    assert levels(stats(pending_count=5, latency_seconds=2.0), seen=False) == []
    assert levels(stats(pending_count=5, latency_seconds=31.0), seen=True) == []
    assert levels(stats(pending_count=5, running_count=1, latency_seconds=99.0), seen=False) == []


def test_a_live_worker_shows_by_a_running_job_or_a_completion_in_the_last_two_minutes():
    now = datetime(2030, 1, 1, 12, 30, 20, tzinfo=UTC)
    def minute(m: int) -> datetime:
        return datetime(2030, 1, 1, 12, m, tzinfo=UTC)

    samples = [(minute(28), 10, 0), (minute(29), 10, 0), (minute(30), 10, 5)]
    assert display.worker_seen(samples, stats(completed_total=11), now)
    # Failures alone come from rescues too: no proof that anything serves the queue.
    assert not display.worker_seen(samples, stats(completed_total=10, retried_total=9), now)
    assert display.worker_seen([], stats(running_count=1), now)
    assert not display.worker_seen([(minute(20), 0, 0)], stats(completed_total=5), now)


def test_the_last_hour_is_computed_per_minute_from_samples_of_the_totals():
    now = datetime(2030, 1, 1, 12, 30, 20, tzinfo=UTC)
    minute = lambda m: datetime(2030, 1, 1, 12, m, tzinfo=UTC)
    samples = [(minute(25), 100, 10), (minute(26), 160, 10), (minute(28), 200, 14)]
    done, failed = display.per_minute(samples, (230, 15), now)
    assert len(done) == 60 and done[:54] == [None] * 54
    # 12:25 → 60; 12:26 and 12:27 share 40; 12:28 … 12:30 share 30 (this minute included).
    assert done[-6:] == [60, 20, 20, 10, 10, 10]
    assert failed[-6:] == [0, 2, 2, 0, 0, 0]
    spark = display.Sparkline(done, failed)
    assert spark.done_path.startswith("M") and spark.completed_total == 130
    assert display.Sparkline([None] * 60, [None] * 60).has_data is False


def test_the_maintenance_records_one_sample_a_minute_and_the_overview_draws_the_sparkline(make_job, viewer):
    make_job("completed", queue_name="q1")
    viewer.get("/")
    assert not QueueSample.objects.exists()  # a page only reads
    maintenance.run("samples")
    maintenance.run("samples")
    samples = QueueSample.objects.filter(queue_name="q1")
    assert samples.count() == samples.values("minute").distinct().count() >= 1  # one a minute
    earliest = samples.order_by("minute").first()
    QueueSample.objects.create(queue_name="q1", minute=earliest.minute - timedelta(minutes=1),
                               completed_total=0, failed_total=0)
    html = viewer.get("/").content.decode()
    row = re.search(r'<tr [^>]*data-queue="q1">(.*?)</tr>', html, re.DOTALL).group(1)
    assert 'class="spark-done" d="M' in row
    assert "last hour: 1 completed, 0 failed runs" in row


# -- one queue --------------------------------------------------------------------------------


def test_the_queue_page_pages_by_keyset_newest_first_and_never_uses_offset(make_job, viewer):
    ids = [make_job("pending", queue_name="paged") for _ in range(7)]
    newest_first = list(reversed(ids))
    with CaptureQueriesContext(connection) as captured:
        first = viewer.get("/queues/paged/?size=3")
    assert not any(" offset " in q["sql"].lower() for q in captured.captured_queries)
    assert listed(first) == newest_first[:3]
    older = re.search(r'href="([^"]+)" rel="next"', first.content.decode()).group(1).replace("&amp;", "&")
    second = viewer.get(older)
    assert listed(second) == newest_first[3:6]
    last = viewer.get(re.search(r'href="([^"]+)" rel="next"', second.content.decode()).group(1).replace("&amp;", "&"))
    assert listed(last) == newest_first[6:]
    assert 'rel="next"' not in last.content.decode()
    newer = re.search(r'href="([^"]+)" rel="prev"', last.content.decode()).group(1).replace("&amp;", "&")
    assert listed(viewer.get(newer)) == newest_first[3:6]
    assert len(listed(viewer.get("/queues/paged/?size=100000"))) == 7  # capped, not refused


def listed(response) -> list[UUID]:
    return [UUID(value) for value in re.findall(r'<tr id="job-([0-9a-f-]{36})"', response.content.decode())]


def test_the_queue_page_filters_by_status_job_type_time_and_text(make_job, viewer):
    timeout = make_job("dead_letter", queue_name="f", job_type="mail.send", error="TimeoutError: smtp 42")
    refused = make_job("failed", queue_name="f", job_type="mail.send", error="ConnectionRefused")
    report = make_job("completed", queue_name="f", job_type="report.build")
    # Running jobs are listed from the lease index (the queue/status index leaves them out).
    running = make_job("running", queue_name="f", job_type="mail.send")
    pending = make_job("pending", queue_name="f", job_type="mail.send")
    assert set(listed(viewer.get("/queues/f/?status=dead_letter"))) == {timeout}
    assert set(listed(viewer.get("/queues/f/?status=running"))) == {running}
    assert set(listed(viewer.get("/queues/f/?type=mail.send"))) == {timeout, refused, pending, running}
    assert set(listed(viewer.get("/queues/f/?q=smtp"))) == {timeout}
    assert set(listed(viewer.get("/queues/f/?q=SMTP&type=mail.send"))) == {timeout}
    assert set(listed(viewer.get(f"/queues/f/?q={report}"))) == {report}
    assert listed(viewer.get(f"/queues/f/?q={uuid4()}")) == []
    assert set(listed(viewer.get("/queues/f/?range=15m"))) == {timeout, refused, report, pending, running}
    JobRecord.objects.filter(id__in=[timeout, refused]).update(created_at=datetime.now(UTC) - timedelta(days=2))
    assert set(listed(viewer.get("/queues/f/?range=24h"))) == {report, pending, running}
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert set(listed(viewer.get(f"/queues/f/?to={yesterday}"))) == {timeout, refused}
    assert viewer.get("/queues/f/?from=garbage&status=nonsense").status_code == 200


def test_an_error_search_reads_a_bounded_window_and_offers_to_carry_on_below_it(make_job, viewer, monkeypatch):
    monkeypatch.setattr(queries, "TEXT_WINDOW", 3)
    rare = make_job("failed", queue_name="w", error="DiskFullError: /var is full")
    for n in range(5):
        make_job("failed", queue_name="w", error=f"TimeoutError: {n}")
    first = viewer.get("/queues/w/?q=diskfull")
    html = first.content.decode()
    assert listed(first) == [] and "older ones remain below job #" in html
    more = re.search(r'href="([^"]+)" rel="next"', html).group(1).replace("&amp;", "&")
    assert listed(viewer.get(more)) == [rare]
    assert len(listed(viewer.get("/queues/w/?q=timeouterror&size=2"))) == 2


def test_an_operator_cancels_a_waiting_job_and_its_row_updates_in_place(make_job, operator):
    job_id = make_job("pending", queue_name="c")
    page = operator.get("/queues/c/").content.decode()
    assert f'hx-post="/jobs/{job_id}/cancel/"' in page and 'hx-target="closest tr"' in page
    row = operator.post(f"/jobs/{job_id}/cancel/", {"row": "queue"}, headers={"HX-Request": "true"})
    html = row.content.decode()
    assert row.status_code == 200 and html.strip().startswith(f'<tr id="job-{job_id}"')
    assert 'data-status="failed"' in html and "Job cancelled" in html
    entry = AuditEntry.objects.get(action="cancel")
    assert (entry.changed, entry.refused, entry.job_ids) == (1, 0, [str(job_id)])


# -- one job ----------------------------------------------------------------------------------


def test_the_job_page_shows_every_field_and_masks_secrets_at_any_depth(make_job, viewer):
    payload = {"to": "ops@example.com", "password": "hunter2",
               "nested": {"Api_Token": "tok-123", "list": [{"Authorization": "Bearer abc"}]}}
    job_id = make_job("completed", payload=payload, metadata={"client_SECRET": "s3cr3t", "trace": "t-1"},
                      result={"sent": True, "session_token": "res-tok"})
    html = viewer.get(f"/jobs/{job_id}/").content.decode()
    for secret in ("hunter2", "tok-123", "Bearer abc", "s3cr3t", "res-tok"):
        assert secret not in html
    assert html.count(display.MASK) == 5
    assert "ops@example.com" in html and "t-1" in html
    record = JobRecord.objects.get(id=job_id)
    for value in (str(job_id), "default", "test.job", "completed", f"#{record.seq}"):
        assert value in html
    for label in ("Created", "Due", "Started", "Completed", "Waited", "Ran", "Lease until", "Retries"):
        assert f">{label}<" in html


def test_the_job_page_shows_the_attempt_history_and_the_actions_its_state_allows(queue, operator):
    job = Job(id=uuid4(), queue_name="h", job_type="test.job", payload={}, max_retries=1)
    queue.enqueue_sync(job)
    first = queue.dequeue_many_sync("h", 1)[0]
    queue.reject_sync(job.id, requeue=True, error_message="TimeoutError: first", claim=first)
    JobRecord.objects.filter(id=job.id).update(run_at=datetime.now(UTC) - timedelta(seconds=1))
    second = queue.dequeue_many_sync("h", 1)[0]
    queue.reject_sync(job.id, requeue=True, error_message="TimeoutError: second", claim=second)
    html = operator.get(f"/jobs/{job.id}/").content.decode()
    assert "TimeoutError: first" in html and "TimeoutError: second" in html
    assert html.count('class="status status-retrying"') >= 1 and "status-dead_letter" in html
    assert f"/jobs/{job.id}/requeue/" in html and f"/jobs/{job.id}/discard/" in html
    assert f"/jobs/{job.id}/cancel/" not in html


# -- dead letter ------------------------------------------------------------------------------


def test_dead_letters_are_grouped_by_queue_job_type_and_error_fingerprint(make_job, viewer):
    for n in (7, 12, 99):
        make_job("dead_letter", queue_name="pay", job_type="charge", error=f"TimeoutError: after {n}s")
    for _ in range(2):
        make_job("dead_letter", queue_name="pay", job_type="charge",
                 error=f"KeyError: customer {uuid4()} not found (0x{uuid4().hex[:8]})")
    make_job("dead_letter", queue_name="pay", job_type="refund", error="TimeoutError: after 5s")
    make_job("failed", queue_name="pay", job_type="charge", error="TimeoutError: after 1s")
    groups = queries.failure_groups(queries.FailureFilter(queue="pay")).groups
    assert [(g.job_type, g.fingerprint, g.count) for g in groups] == [
        ("charge", "TimeoutError: after <n>s", 3),
        ("charge", "KeyError: customer <uuid> not found (<hex>)", 2),
        ("refund", "TimeoutError: after <n>s", 1),
    ]
    assert all(g.first_seen and g.last_seen and g.first_seen <= g.last_seen for g in groups)
    html = viewer.get("/dead-letter/?queue=pay").content.decode()
    assert "TimeoutError: after &lt;n&gt;s" in html and ">3</strong>" in html
    # The group's own link lists its jobs and no others.
    link = f"/dead-letter/?status=dead_letter&queue=pay&job_type=charge&group={groups[0].key}"
    assert len(listed(viewer.get(link))) == 3
    failed = queries.failure_groups(queries.FailureFilter(status="failed", queue="pay")).groups
    assert [(g.fingerprint, g.count) for g in failed] == [("TimeoutError: after <n>s", 1)]


FINGERPRINTS = [
    ("TimeoutError: timed out after 30s talking to 10.0.0.12:5432", "TimeoutError: timed out after <n>s talking to <n>.<n>.<n>.<n>:<n>"),
    ("KeyError: user 6f1c2b9e-0d3a-4c55-9a4e-1b2c3d4e5f60 missing", "KeyError: user <uuid> missing"),
    ("ValueError: bad pointer 0xDEADBEEF and id 507f1f77bcf86cd799439011", "ValueError: bad pointer <hex> and id <hex>"),
    ("plain words stay", "plain words stay"),
    ("", ""),
]


@pytest.mark.postgres
def test_the_python_fingerprint_agrees_with_the_database_function():
    with connection.cursor() as cursor:
        for message, expected in FINGERPRINTS:
            assert queries.fingerprint(message) == expected
            cursor.execute("SELECT portico_fingerprint(%s), md5(portico_fingerprint(%s))", [message, message])
            in_sql, key = cursor.fetchone()
            assert (in_sql, key) == (expected, queries.group_key(expected))


def test_requeue_from_the_dead_letter_page_updates_the_row_and_the_counts_in_place(make_job, operator):
    ids = [make_job("dead_letter", queue_name="dl", error="E: 1") for _ in range(3)]
    page = operator.get("/dead-letter/?queue=dl").content.decode()
    assert re.search(r'data-total>3<', page)
    response = operator.post(f"/jobs/{ids[0]}/requeue/",
                             {"row": "dead_letter", "status": "dead_letter", "queue": "dl", "next": "/dead-letter/"},
                             headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200
    assert html.strip().startswith(f'<tr id="job-{ids[0]}" class="jobrow row-changed" data-status="pending"')
    assert '<template><section id="failure-summary" hx-swap-oob="true">' in html  # see actions._row
    assert re.search(r'data-total>2<', html)
    assert status_of(ids[0]) == "pending"
    again = operator.post(f"/jobs/{ids[0]}/requeue/", {"row": "dead_letter"}, headers={"HX-Request": "true"})
    assert "only dead-letter and failed jobs can be requeued" in again.content.decode()
    entries = list(AuditEntry.objects.order_by("id").values_list("changed", "refused"))
    assert entries == [(1, 0), (0, 1)]


def test_requeue_and_discard_of_chosen_jobs_report_and_audit_each_job(make_job, operator):
    dead = [make_job("dead_letter", queue_name="ch") for _ in range(3)]
    running = make_job("running", queue_name="ch")
    response = operator.post("/dead-letter/chosen/", {"action": "requeue", "job": [*map(str, dead[:2]), str(running)],
                                                      "next": "/dead-letter/?queue=ch"}, follow=True)
    assert response.redirect_chain == [("/dead-letter/?queue=ch", 303)]
    text = response.content.decode()
    assert "Requeued 2 jobs." in text and "it is running" in text
    assert [status_of(i) for i in dead] == ["pending", "pending", "dead_letter"]
    entry = AuditEntry.objects.get(action="requeue")
    assert (entry.requested, entry.changed, entry.refused, entry.scope) == (3, 2, 1, "jobs")
    assert entry.job_ids == [str(dead[0]), str(dead[1]), str(running)]

    attempts = JobAttemptRecord.objects.filter(job__id=dead[2]).count()
    assert attempts == 1
    unconfirmed = operator.post("/dead-letter/chosen/", {"action": "discard", "job": [str(dead[2])]}, follow=True)
    assert "type “discard” to confirm" in unconfirmed.content.decode()
    assert status_of(dead[2]) == "dead_letter"
    operator.post("/dead-letter/chosen/", {"action": "discard", "confirm": "discard", "job": [str(dead[2]), str(dead[0])]})
    assert status_of(dead[2]) is None and status_of(dead[0]) == "pending"
    assert not JobAttemptRecord.objects.filter(job__id=dead[2]).exists()
    discard = AuditEntry.objects.get(action="discard")
    assert (discard.changed, discard.refused) == (1, 1)


def test_state_guards_refuse_what_the_lifecycle_forbids_and_audit_the_refusal(make_job, operator):
    completed = make_job("completed", queue_name="g")
    running = make_job("running", queue_name="g2")
    pending = make_job("pending", queue_name="g3")
    refusals = [
        (f"/jobs/{pending}/requeue/", {}),
        (f"/jobs/{completed}/requeue/", {}),
        (f"/jobs/{running}/cancel/", {}),
        (f"/jobs/{completed}/cancel/", {}),
        (f"/jobs/{pending}/discard/", {"confirm": "discard"}),
        (f"/jobs/{running}/discard/", {"confirm": "discard"}),
    ]
    for url, body in refusals:
        response = operator.post(url, body, follow=True)
        assert "Refused: cannot" in response.content.decode(), url
    assert (status_of(completed), status_of(running), status_of(pending)) == ("completed", "running", "pending")
    assert set(AuditEntry.objects.values_list("changed", "refused")) == {(0, 1)}
    assert AuditEntry.objects.count() == len(refusals)


def test_an_action_over_a_filter_runs_in_batches_and_counts_each_batch_in_the_audit_entry(make_job, monkeypatch):
    ids = [make_job("dead_letter", queue_name="bulk", error=f"E: {n}") for n in range(7)]
    other = make_job("dead_letter", queue_name="elsewhere")
    operator_user = user_in("operator")
    f = queries.FailureFilter(queue="bulk")
    entry = operations.start_on_filter("requeue", f, user=operator_user)
    late = make_job("dead_letter", queue_name="bulk")  # failed after the action began
    batches, real = [], operations._filter_batch

    def counted(*args):
        batches.append(real(*args))
        counts = AuditEntry.objects.get(pk=entry.pk)
        batches[-1] += (counts.changed,)  # the entry before this batch adds its counts
        return batches[-1][:3]

    monkeypatch.setattr(operations, "_filter_batch", counted)
    done = operations.run_on_filter(entry.pk, batch=3)
    assert [(changed, so_far) for _, changed, _, so_far in batches] == [(3, 0), (3, 3), (1, 6), (0, 7)]
    assert (done.requested, done.changed, done.refused) == (7, 7, 0)
    assert done.finished_at is not None and done.actor_name == operator_user.username
    assert [status_of(i) for i in ids] == ["pending"] * 7
    assert status_of(other) == "dead_letter" and status_of(late) == "dead_letter"
    assert done.filter == {"status": "dead_letter", "queue": "bulk", "upto_seq": JobRecord.objects.get(id=late).seq - 1}


def test_discard_over_a_fingerprint_group_deletes_only_that_group(make_job):
    timeouts = [make_job("dead_letter", queue_name="grp", error=f"Timeout after {n}s") for n in range(4)]
    keep = make_job("dead_letter", queue_name="grp", error="KeyError: x")
    group = next(g for g in queries.failure_groups(queries.FailureFilter(queue="grp")).groups
                 if g.fingerprint.startswith("Timeout"))
    entry = operations.start_on_filter("discard", group.filter(), user=user_in("operator"))
    assert entry.requested == 4
    done = operations.run_on_filter(entry.pk, batch=2)
    assert done.changed == 4 and all(status_of(i) is None for i in timeouts)
    assert status_of(keep) == "dead_letter"
    assert [g.fingerprint for g in queries.failure_groups(queries.FailureFilter(queue="grp")).groups] == ["KeyError: x"]


def test_the_preview_shows_the_count_and_a_discard_needs_the_typed_word(make_job, operator):
    for _ in range(3):
        make_job("dead_letter", queue_name="pv")
    page = operator.get("/dead-letter/bulk/preview/?action=discard&queue=pv").content.decode()
    assert re.search(r"data-count>3<", page) and 'name="confirm"' in page
    response = operator.post("/dead-letter/bulk/", {"action": "discard", "queue": "pv", "status": "dead_letter"})
    assert response.status_code == 303 and "/dead-letter/bulk/preview/" in response["Location"]
    assert JobRecord.objects.filter(queue_name="pv").count() == 3
    assert not AuditEntry.objects.exists()
    assert operator.get("/dead-letter/bulk/preview/?action=explode").status_code == 404


# -- audit ------------------------------------------------------------------------------------


def test_the_audit_page_lists_who_did_what_and_when_from_the_dashboard_and_the_admin(make_job):
    staff = user_in("operator", staff=True)
    dashboard, admin = client_for(staff), client_for(staff)
    first = make_job("dead_letter", queue_name="a")
    second = make_job("dead_letter", queue_name="a2")
    dashboard.post(f"/jobs/{first}/requeue/")
    admin.post("/admin/jobs/jobrecord/", {"action": "requeue_jobs",
                                          "_selected_action": [JobRecord.objects.get(id=second).seq]})
    html = client_for(user_in("viewer")).get("/audit/").content.decode()
    rows = re.findall(r'<tr data-entry="\d+">(.*?)</tr>', html, re.DOTALL)
    assert len(rows) == 2
    assert ">admin<" in rows[0] and str(second)[:8] in rows[0]
    assert ">dashboard<" in rows[1] and str(first)[:8] in rows[1]
    assert all(staff.username in row and "requeue" in row for row in rows)


# -- admin ------------------------------------------------------------------------------------


def test_the_admin_lists_filters_and_searches_jobs_without_counting_the_whole_table(make_job):
    staff = client_for(user_in("viewer", staff=True))
    dead = make_job("dead_letter", queue_name="adm", job_type="mail.send", error="SMTPError: 550 mailbox")
    done = make_job("completed", queue_name="adm2", job_type="report.build")
    running = make_job("running", queue_name="adm2", job_type="report.build")
    assert {dead, done, running} <= set(admin_listed(staff.get("/admin/jobs/jobrecord/")))
    assert admin_listed(staff.get("/admin/jobs/jobrecord/?status__exact=dead_letter")) == [dead]
    assert admin_listed(staff.get("/admin/jobs/jobrecord/?queue=adm2")) == [running, done]
    assert admin_listed(staff.get(f"/admin/jobs/jobrecord/?q={dead}")) == [dead]
    assert admin_listed(staff.get("/admin/jobs/jobrecord/?q=report.build")) == [running, done]
    assert admin_listed(staff.get("/admin/jobs/jobrecord/?q=mailbox")) == [dead]
    assert staff.get("/admin/jobs/jobrecord/add/").status_code == 403


def admin_listed(response) -> list[UUID]:
    assert response.status_code == 200
    html = response.content.decode()
    return [UUID(v) for v in re.findall(r'<th class="field-short_id"[^>]*>.*?([0-9a-f-]{36})', html)]


def test_the_admin_shows_the_payload_as_masked_escaped_json_read_only(make_job):
    staff = client_for(user_in("viewer", staff=True))
    job_id = make_job("dead_letter", payload={"password": "hunter2", "html": "<b>x</b>"})
    seq = JobRecord.objects.get(id=job_id).seq
    html = staff.get(f"/admin/jobs/jobrecord/{seq}/change/").content.decode()
    assert "hunter2" not in html and display.MASK in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert 'name="_save"' not in html  # nothing to save: the admin only reads jobs


def test_admin_actions_use_the_same_operations_and_need_the_operate_permission(make_job):
    dead = make_job("dead_letter", queue_name="ad1")
    pending = make_job("pending", queue_name="ad2")
    seqs = dict(JobRecord.objects.values_list("id", "seq"))
    viewer_staff = client_for(user_in("viewer", staff=True))
    listing = viewer_staff.get("/admin/jobs/jobrecord/").content.decode()
    assert "requeue_jobs" not in listing
    viewer_staff.post("/admin/jobs/jobrecord/", {"action": "requeue_jobs", "_selected_action": [seqs[dead]]})
    assert status_of(dead) == "dead_letter" and not AuditEntry.objects.exists()

    operator_staff = client_for(user_in("operator", staff=True))
    assert "requeue_jobs" in operator_staff.get("/admin/jobs/jobrecord/").content.decode()
    operator_staff.post("/admin/jobs/jobrecord/", {"action": "requeue_jobs",
                                                   "_selected_action": [seqs[dead], seqs[pending]]})
    operator_staff.post("/admin/jobs/jobrecord/", {"action": "cancel_jobs", "_selected_action": [seqs[pending]]})
    assert status_of(dead) == "pending" and status_of(pending) == "failed"
    entries = list(AuditEntry.objects.order_by("id").values_list("source", "action", "changed", "refused"))
    assert entries == [("admin", "requeue", 1, 1), ("admin", "cancel", 1, 0)]
    assert operator_staff.get(f"/admin/jobs/jobrecord/{seqs[dead]}/delete/").status_code == 403
    assert operator_staff.get(f"/admin/jobs/auditentry/{AuditEntry.objects.first().pk}/delete/").status_code == 403
