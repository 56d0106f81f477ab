"""A GET only reads: every page, partial and /metrics, captured statement by statement.

Upkeep (throughput samples, counter and failure-group compaction, drift rebuilds) runs on
the maintenance timers (jobs.maintenance), so pages and /metrics could be served from a
read replica. Exempt, and only these: writes to Django's session table (logging in, a
session's expiry) and to the shared page cache table ``portico_cache`` (a page snapshot
kept for about a second); both are the web tier's own state, never the job store's.
"""
from __future__ import annotations

import re
from typing import Any
from uuid import uuid4

import pytest
from django.contrib.auth.models import Group, User
from django.contrib.contenttypes.models import ContentType
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from jobs import maintenance, services
from jobs.models import AuditEntry, FailureDelta, JobRecord, QueueCounter, QueueSample
from portico.ports.job import Job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

EXEMPT_TABLES = ("portico_cache", "django_session")
_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|LOCK|TRUNCATE|MERGE|COPY)\b", re.IGNORECASE)
_LOCKING = re.compile(r"\bFOR\s+(NO\s+KEY\s+)?(UPDATE|SHARE)\b|\bpg_(try_)?advisory", re.IGNORECASE)
_CTE_WRITE = re.compile(r"^\s*WITH\b.*\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\b", re.IGNORECASE | re.DOTALL)
_TARGET = re.compile(r'^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"?([a-z_]+)"?', re.IGNORECASE)

# Query strings that reach the other branches of a page: filters, text search, partials' data.
VARIANTS = {
    "jobs:queue": ["", "?status=dead_letter", "?status=running", "?q=boom", "?range=1h", "?type=test.job&size=2"],
    "jobs:dead-letter": ["", "?status=failed", "?queue=default&job_type=test.job", "?group=" + "0" * 32],
    "jobs:bulk-preview": ["?action=requeue&status=dead_letter", "?action=discard&status=failed"],
    "jobs:audit": ["", "?action=requeue"],
    "admin:jobs_jobrecord_changelist": ["", "?status=failed", "?q=boom", "?q=test.job", "?queue=default"],
}


def writes(statements: list[str]) -> list[str]:
    """The statements that write or lock, leaving out those on the exempt tables."""
    found = []
    for sql in statements:
        if not (_WRITE.search(sql) or _LOCKING.search(sql) or _CTE_WRITE.search(sql)):
            continue
        target = _TARGET.match(sql)
        if target and target.group(1).lower() in EXEMPT_TABLES:
            continue
        found.append(sql)
    return found


def test_the_write_detector_sees_writes_and_locks_and_exempts_only_the_web_tiers_tables():
    assert writes(['INSERT INTO "portico_queue_sample" ("minute") VALUES (1)']) != []
    assert writes(["WITH gone AS (DELETE FROM portico_failure_delta RETURNING 1) SELECT 1"]) != []
    assert writes(["LOCK TABLE portico_job IN SHARE MODE"]) != []
    assert writes(["SELECT seq FROM portico_job WHERE id = 1 FOR UPDATE"]) != []
    assert writes(["SELECT pg_try_advisory_xact_lock(hashtext('x'))"]) != []
    assert writes(['UPDATE "django_session" SET "expire_date" = now()',
                   'INSERT INTO "portico_cache" ("cache_key") VALUES (1)',
                   'DELETE FROM "portico_cache" WHERE "expires" < now()',
                   "SELECT status, updated FROM portico_job"]) == []


def walk(resolver: URLResolver, namespaces: tuple[str, ...] = (), prefix: str = ""):
    """(full name or None, route text, the pattern's parameters) of every URL the site has."""
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            names = namespaces + ((pattern.namespace,) if pattern.namespace else ())
            yield from walk(pattern, names, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            name = ":".join(namespaces + (pattern.name,)) if pattern.name else None
            yield name, prefix + str(pattern.pattern), sorted(pattern.pattern.regex.groupindex)


@pytest.fixture
def world(empty_store) -> dict[str, Any]:
    """Jobs in every state (failures never compacted), a sample, an audit entry, a superuser."""
    queue = services.job_queue()
    ids = {}
    for status in ("completed", "failed", "dead_letter", "retrying", "running", "pending"):
        job = Job(id=uuid4(), queue_name="default", job_type="test.job", payload={"n": 1},
                  max_retries=1 if status == "retrying" else 0)
        queue.enqueue_sync(job)
        ids[status] = job.id
        if status == "pending":
            break
        (claim,) = queue.dequeue_many_sync("default", 1)
        if status == "completed":
            queue.acknowledge_sync(job.id, {"ok": True}, claim=claim)
        elif status == "failed":
            queue.reject_sync(job.id, requeue=False, error_message="ValueError: boom 1", claim=claim)
        elif status == "retrying":
            queue.reject_sync(job.id, requeue=True, error_message="ValueError: boom 2", claim=claim, delay=3600)
        elif status == "dead_letter":  # no retries left: straight to dead letter
            queue.reject_sync(job.id, requeue=True, error_message="ValueError: boom 3", claim=claim)
    maintenance.run("samples")
    entry = AuditEntry.objects.create(actor_name="someone", action="requeue", source="dashboard",
                                      scope="filter", filter={"status": "dead_letter", "upto_seq": 1})
    admin = User.objects.create_superuser(f"admin-{uuid4().hex[:6]}", password="pw")
    return {"ids": ids, "entry": entry, "admin": admin}


def urls(world: dict[str, Any]) -> dict[str, list[str]]:
    """Every URL pattern of the site, made concrete with objects of the world, with its variants."""
    job = JobRecord.objects.get(id=world["ids"]["dead_letter"])
    objects = {"jobrecord": job.pk, "auditentry": world["entry"].pk, "user": world["admin"].pk,
               "group": Group.objects.get_or_create(name="viewer")[0].pk}
    found: dict[str, list[str]] = {}
    for name, route, params in walk(get_resolver()):
        model = re.search(r"admin/[a-z]+/([a-z]+)/", route)
        values = {
            "name": "default", "job_id": job.id, "entry_id": world["entry"].pk,
            "object_id": objects[model.group(1)] if model else job.pk, "id": world["admin"].pk,
            "content_type_id": ContentType.objects.get_for_model(JobRecord).pk,
            "app_label": "jobs", "uidb64": "MQ", "token": "set-password",
        }
        if name is not None:
            base = reverse(name, kwargs={p: values[p] for p in params})
        elif "(?P<url>" in route:  # the admin's catch-all
            base = "/admin/no-such-page/"
        else:  # the admin's object URL without /change/, which redirects to it
            base = "/" + re.sub(r"<path:object_id>", str(values["object_id"]), route)
        key = name or base
        found[key] = [base + query for query in VARIANTS.get(key, [""])]
    # Each job page, in every state the job can be in.
    found["jobs:job"] = [reverse("jobs:job", kwargs={"job_id": job_id}) for job_id in world["ids"].values()]
    return found


def test_no_get_of_any_page_partial_or_metrics_writes_or_locks(world):
    client = Client()
    client.force_login(world["admin"])
    counters_before = QueueCounter.objects.count()
    groups_before = FailureDelta.objects.count()
    samples_before = QueueSample.objects.count()
    offending: dict[str, list[str]] = {}
    visited = 0
    for name, addresses in urls(world).items():
        for url in addresses:
            for headers in ({}, {"HX-Request": "true"}):
                captured = [CaptureQueriesContext(connection) for connection in connections.all()]
                for context in captured:
                    context.__enter__()
                try:
                    response = client.get(url, headers=headers)
                finally:
                    for context in captured:
                        context.__exit__(None, None, None)
                assert response.status_code < 500, (url, response.status_code)
                visited += 1
                bad = writes([q["sql"] for context in captured for q in context.captured_queries])
                if bad:
                    offending[f"GET {url} {headers or ''}"] = bad
    assert offending == {}
    assert visited >= 2 * 60  # every pattern of the site, its variants, each with and without HX
    # Nothing was folded or added behind the statements' backs either.
    assert QueueCounter.objects.count() == counters_before
    assert FailureDelta.objects.count() == groups_before
    assert QueueSample.objects.count() == samples_before


def test_metrics_with_a_token_only_reads(world, settings):
    settings.PORTICO_METRICS_TOKEN = "metrics-token-0123456789"
    with CaptureQueriesContext(connections["default"]) as captured:
        response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-0123456789")
    assert response.status_code == 200
    assert writes([q["sql"] for q in captured.captured_queries]) == []


def test_pages_and_metrics_read_right_counts_before_and_after_compaction(world):
    client = Client()
    client.force_login(world["admin"])
    queue = services.job_queue()
    assert QueueCounter.objects.values("queue_name", "name").distinct().count() < QueueCounter.objects.count()

    def seen() -> tuple[Any, ...]:
        stats = queue.get_queue_stats_sync("default")
        metrics = client.get("/metrics").content.decode()
        dead = re.search(r'portico_jobs\{queue="default",status="dead_letter"\} (\S+)', metrics).group(1)
        groups = client.get("/dead-letter/?status=failed").content.decode().count('<tr data-group=')
        return (stats.completed_count, stats.failed_count, stats.dead_letter_count, stats.pending_count,
                stats.retrying_count, stats.running_count, stats.enqueued_total, dead, groups)

    before = seen()
    assert before[:7] == (1, 1, 1, 1, 1, 1, 6)
    maintenance.run("compact")
    assert QueueCounter.objects.values("queue_name", "name").distinct().count() == QueueCounter.objects.count()
    assert seen() == before
