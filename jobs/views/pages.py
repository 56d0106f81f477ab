"""The dashboard's pages: overview, one queue, one job, dead letter, audit trail, and an action's progress.

Each page renders whole for a browser and as its named partial for an HTMX request, so
the live parts poll the same URL the page has.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.encoding import escape_uri_path
from django.views.decorators.http import require_GET

from jobs import queries
from jobs.models import AuditEntry
from jobs.operations import FILTER_ACTIONS, is_requeueable, is_waiting, past_tense
from jobs.services import job_queue
from jobs.views import display
from jobs.views.access import (
    audit_viewer_required,
    can_operate,
    operator_required,
    viewer_required,
)
from portico.ports.job import QueueStats

RANGES = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(hours=24),
          "7d": timedelta(days=7)}


def queue_url(name: str, **params: Any) -> str:
    url = reverse("jobs:queue", kwargs={"name": name})
    query = {key: value for key, value in params.items() if value not in (None, "")}
    return f"{url}?{urlencode(query)}" if query else url


def _with(request: HttpRequest, **changes: Any) -> str:
    """This page's URL with some parameters changed (None drops one)."""
    params = request.GET.copy()
    for key, value in changes.items():
        params.pop(key, None)
        if value is not None:
            params[key] = str(value)
    path = escape_uri_path(request.path)  # a queue's name may hold "?", "#" or spaces
    return f"{path}?{params.urlencode()}" if params else path


def _cursors(request: HttpRequest) -> dict[str, Any]:
    return {"before": queries.cursor_value(request.GET.get("before")),
            "after": queries.cursor_value(request.GET.get("after")),
            "size": queries.page_size(request.GET.get("size", queries.PAGE_SIZE))}


def _pager(request: HttpRequest, page: queries.Page) -> dict[str, str | None]:
    return {"newer_url": _with(request, after=page.newer, before=None) if page.newer else None,
            "older_url": _with(request, before=page.older, after=None) if page.older else None}


# -- overview ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    status: str
    count: int
    text: str
    url: str


@dataclass(frozen=True)
class QueueRow:
    name: str
    url: str
    cells: list[Cell]
    failure_rate: str
    failing: bool
    latency: str
    spark: display.Sparkline
    badges: list[display.Badge] = field(default_factory=list)
    workers: int = 0


def _row(stats: QueueStats, samples: list[tuple[datetime, int, int]], now: datetime,
         url: str, badges: list[display.Badge], workers: int = 0) -> QueueRow:
    done, failed = display.per_minute(samples, (stats.completed_total, stats.failed_runs_total), now)
    return QueueRow(
        name=stats.queue_name,
        url=url,
        cells=[Cell(status, stats.count(status), display.number(stats.count(status)),
                    f"{url}?{urlencode({'status': status})}" if url else "")
               for status in display.STATUS_ORDER],
        failure_rate=display.percent(stats.failure_rate),
        failing=stats.is_failing,
        latency=display.duration(stats.latency_seconds) if stats.latency_seconds else "—",
        spark=display.Sparkline(done, failed),
        badges=badges,
        workers=workers,
    )


def _total(all_stats: list[QueueStats]) -> QueueStats:
    summed = {name: sum(getattr(s, name) for s in all_stats) for name in (
        "pending_count", "running_count", "completed_count", "failed_count", "dead_letter_count",
        "scheduled_count", "retrying_count", "enqueued_total", "completed_total", "failed_total",
        "dead_lettered_total", "retried_total")}
    return QueueStats(queue_name="", latency_seconds=max((s.latency_seconds for s in all_stats), default=0.0),
                      **summed)


def _sum_samples(samples: dict[str, list[tuple[datetime, int, int]]]) -> list[tuple[datetime, int, int]]:
    """All queues' samples added up, over the minutes every queue has one."""
    if not samples:
        return []
    minutes = set.intersection(*({minute for minute, _, _ in rows} for rows in samples.values()))
    totals: dict[datetime, list[int]] = {minute: [0, 0] for minute in minutes}
    for rows in samples.values():
        for minute, done, failed in rows:
            if minute in totals:
                totals[minute][0] += done
                totals[minute][1] += failed
    return [(minute, done, failed) for minute, (done, failed) in sorted(totals.items())]


@require_GET
@viewer_required
def overview(request: HttpRequest) -> HttpResponse:
    """Every queue's seven counts, live workers, failure rate, latency, last hour and health; polled every 2 s."""
    now = timezone.now()
    store = job_queue()
    all_stats = store.get_all_queue_stats_sync()
    live = store.live_workers_sync()
    samples = queries.samples_since(queries.recent_cutoff(now, 61))
    rows = []
    for stats in all_stats:
        own = samples.get(stats.queue_name, [])
        workers = live.get(stats.queue_name, 0)
        seen = workers > 0 or display.worker_seen(own, stats, now)
        badges = display.health(stats, worker_seen=seen)
        rows.append(_row(stats, own, now, queue_url(stats.queue_name), badges, workers))
    context = {
        "section": "overview",
        "rows": rows,
        "totals": _row(_total(all_stats), _sum_samples(samples), now, "", []) if all_stats else None,
        "statuses": display.STATUS_ORDER,
        "columns": len(display.STATUS_ORDER) + 6,
        "now": now,
    }
    template = "jobs/overview.html#queue-table" if request.htmx else "jobs/overview.html"
    return render(request, template, context)


# -- one queue -----------------------------------------------------------------------------


def _moment(text: str | None) -> datetime | None:
    """A datetime-local value (read as UTC), or None when absent or malformed."""
    if not text:
        return None
    try:
        value = parse_datetime(text.strip())
    except ValueError:
        return None
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@require_GET
@viewer_required
def queue_detail(request: HttpRequest, name: str) -> HttpResponse:
    """One queue's jobs, filtered, newest first, a keyset page at a time; its counts stay live."""
    if not queries.known_queue(name):
        raise Http404("no such queue")
    stats = job_queue().get_queue_stats_sync(name)
    counts = [Cell(status, stats.count(status), display.number(stats.count(status)),
                   queue_url(name, status=status)) for status in display.STATUS_ORDER]
    if request.htmx:
        return render(request, "jobs/queue.html#queue-counts", {"name": name, "counts": counts,
                                                                 "queue_path": request.path})
    status = request.GET.get("status") or None
    status = status if status in display.STATUS_ORDER else None
    span = request.GET.get("range") or ""
    since = _moment(request.GET.get("from"))
    until = _moment(request.GET.get("to"))
    if span in RANGES:
        since, until = timezone.now() - RANGES[span], None
    f = queries.JobFilter(queue=name, status=status, job_type=(request.GET.get("type") or "").strip() or None,
                          since=since, until=until, text=(request.GET.get("q") or "").strip())
    page = queries.queue_jobs(f, **_cursors(request))
    context = {
        "section": "overview",
        "name": name,
        "queue_path": request.path,
        "counts": counts,
        "filter": f,
        "span": span,
        "ranges": list(RANGES),
        "statuses": display.STATUS_ORDER,
        "jobs": job_rows(page.jobs),
        "page": page,
        "size": queries.page_size(request.GET.get("size", queries.PAGE_SIZE)),
        "max_size": queries.MAX_PAGE_SIZE,
        "text_window": queries.TEXT_WINDOW,
        "can_operate": can_operate(request),
        "next": request.get_full_path(),
        **_pager(request, page),
    }
    return render(request, "jobs/queue.html", context)


@dataclass(frozen=True)
class JobRow:
    """A job as a list row shows it, every string ready: rows render by the hundred."""

    id: str
    short_id: str
    url: str
    requeue_url: str
    cancel_url: str
    queue_name: str
    job_type: str
    status: str
    priority: int
    retries: str
    created: str
    failed: str
    error: str
    cancellable: bool
    requeueable: bool


_ZERO = UUID(int=0)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def job_urls() -> dict[str, str]:
    """URL patterns of the per-job pages and actions, reversed once instead of once a row."""
    return {name: reverse(f"jobs:{name}", kwargs={"job_id": _ZERO}).replace(str(_ZERO), "{}")
            for name in ("job", "job-requeue", "job-cancel")}


def job_row(job: Any, urls: dict[str, str] | None = None) -> JobRow:
    urls = urls or job_urls()
    job_id = str(job.id)
    error = job.error_message or ""
    return JobRow(
        id=job_id, short_id=job_id[:8], url=urls["job"].format(job_id),
        requeue_url=urls["job-requeue"].format(job_id), cancel_url=urls["job-cancel"].format(job_id),
        queue_name=job.queue_name, job_type=job.job_type, status=job.status, priority=job.priority,
        retries=f"{job.retry_count}/{job.max_retries}",
        created=job.created_at.astimezone(UTC).strftime(TIME_FORMAT) if job.created_at else "",
        failed=job.failed_at.astimezone(UTC).strftime(TIME_FORMAT) if job.failed_at else "",
        error=error if len(error) <= 240 else error[:239] + "…",
        cancellable=is_waiting(job.status), requeueable=is_requeueable(job.status),
    )


def job_rows(jobs: list[Any]) -> list[JobRow]:
    urls = job_urls()
    return [job_row(job, urls) for job in jobs]


# -- one job -------------------------------------------------------------------------------


@require_GET
@viewer_required
def job_detail(request: HttpRequest, job_id: UUID) -> HttpResponse:
    """Every field of one job, its masked payload, metadata and result, and its attempts."""
    job = queries.job_record(job_id)
    if job is None:
        raise Http404("no job has this id")
    now = timezone.now()
    attempts = job_queue().get_job_attempts_sync(job_id)
    waiting = is_waiting(job.status)
    if waiting:
        waited = display.between(job.run_at, now) if job.run_at <= now else None
    else:
        waited = display.between(job.run_at, job.started_at) if job.started_at else None
    finished = job.completed_at or job.failed_at or (now if job.status == "running" else None)
    context = {
        "section": "overview",
        "job": job,
        "queue_link": queue_url(job.queue_name),
        "payload": display.pretty_json(job.payload),
        "metadata": display.pretty_json(job.metadata),
        "result": display.pretty_json(job.result_data) if job.result_data is not None else None,
        "waited": display.duration(waited) if waited is not None else "—",
        "due_in": display.duration(display.between(now, job.run_at)) if waiting and job.run_at > now else None,
        "ran": display.duration(display.between(job.started_at, finished)) if job.started_at and finished else "—",
        "attempts": [{"attempt": a, "took": display.duration(display.between(a.started_at, a.finished_at))
                      if a.finished_at else "running"} for a in attempts],
        "cancellable": waiting,
        "requeueable": is_requeueable(job.status),
        "can_operate": can_operate(request),
        "next": request.get_full_path(),
    }
    return render(request, "jobs/job.html", context)


# -- dead letter ---------------------------------------------------------------------------


def failure_context(request: HttpRequest, f: queries.FailureFilter) -> dict[str, Any]:
    """The dead-letter page's summary and groups: also sent after each requeue, to update in place."""
    groups = queries.failure_groups(f)
    all_stats = job_queue().get_all_queue_stats_sync()
    per_queue = [(s.queue_name, s.count(f.status)) for s in all_stats if s.count(f.status)]
    base = reverse("jobs:dead-letter")
    preview = reverse("jobs:bulk-preview")
    shown = groups.groups[:queries.GROUP_LIMIT]
    return {
        "filter": f,
        "status_total": display.number(sum(n for _, n in per_queue)),
        "status_count": sum(n for _, n in per_queue),
        "per_queue": [(name, display.number(n), f"{base}?{urlencode({'status': f.status, 'queue': name})}")
                      for name, n in per_queue],
        "queue_names": [s.queue_name for s in all_stats],
        "groups": [{
            "group": g,
            "count": display.number(g.count),
            "jobs_url": f"{base}?{urlencode(g.filter().as_dict())}",
            "requeue_url": bulk_url("requeue", g.filter(), preview),
            "discard_url": bulk_url("discard", g.filter(), preview),
        } for g in shown],
        "hidden_groups": len(groups.groups) - len(shown),
        "groups_complete": groups.complete,
        "matching": display.number(groups.total),
        "matching_count": groups.total,
        "live_limit": queries.LIVE_GROUP_LIMIT,
        "requeue_all_url": bulk_url("requeue", f, preview),
        "discard_all_url": bulk_url("discard", f, preview),
        "can_operate": can_operate(request),
    }


def bulk_url(action: str, f: queries.FailureFilter, base: str | None = None) -> str:
    return f"{base or reverse('jobs:bulk-preview')}?{urlencode({'action': action, **f.as_dict()})}"


@require_GET
@viewer_required
def dead_letter(request: HttpRequest) -> HttpResponse:
    """Dead-letter (or failed) jobs grouped by queue, job type and error fingerprint, and a page of them."""
    f = queries.FailureFilter.from_mapping(request.GET)
    page = queries.failure_jobs(f, **_cursors(request))
    context = {
        **failure_context(request, f),
        "section": "dead_letter",
        "jobs": job_rows(page.jobs),
        "page": page,
        "filter_fields": f.as_dict(),
        "next": request.get_full_path(),
        "all_url": f"{reverse('jobs:dead-letter')}?{urlencode({'status': f.status})}",
        **_pager(request, page),
    }
    return render(request, "jobs/dead_letter.html", context)


# -- actions over a filter: preview and progress -------------------------------------------


@require_GET
@operator_required
def bulk_preview(request: HttpRequest) -> HttpResponse:
    """How many jobs an action over the filter would change, before the operator confirms it."""
    action = request.GET.get("action")
    if action not in FILTER_ACTIONS:
        raise Http404("no such action")
    f = queries.FailureFilter.from_mapping(request.GET)
    groups = queries.failure_groups(f)
    context = {
        "section": "dead_letter",
        "action": action,
        "filter": f,
        "filter_fields": f.as_dict(),
        "count": groups.total,
        "count_text": display.number(groups.total),
        "groups": [{"group": g, "count": display.number(g.count)} for g in groups.groups[:queries.GROUP_LIMIT]],
        "back_url": f"{reverse('jobs:dead-letter')}?{urlencode(f.as_dict())}",
    }
    return render(request, "jobs/bulk_preview.html", context)


@require_GET
@audit_viewer_required
def bulk_progress(request: HttpRequest, entry_id: int) -> HttpResponse:
    """An action over a filter as it runs; the progress partial polls until it is done."""
    entry = get_object_or_404(AuditEntry, pk=entry_id, scope="filter")
    f = queries.FailureFilter.from_mapping(entry.filter)
    done = entry.changed + entry.refused
    context = {
        "section": "dead_letter",
        "entry": entry,
        "filter": f,
        "done": done,
        "done_text": display.number(done),
        "action_done": past_tense(entry.action),
        "requested_text": display.number(entry.requested),
        "progress_max": max(entry.requested, done, 1),
        "back_url": f"{reverse('jobs:dead-letter')}?{urlencode({'status': f.status})}",
    }
    template = "jobs/bulk_progress.html#progress" if request.htmx else "jobs/bulk_progress.html"
    return render(request, template, context)


# -- audit ---------------------------------------------------------------------------------


@require_GET
@audit_viewer_required
def audit_log(request: HttpRequest) -> HttpResponse:
    """Every operator action, newest first: who, when, what, over which jobs or filter."""
    action = request.GET.get("action") or None
    action = action if action in ("requeue", "cancel", "discard") else None
    entries, older = queries.audit_entries(action=action, before=queries.cursor_value(request.GET.get("before")),
                                           size=request.GET.get("size", queries.PAGE_SIZE))
    rows = []
    for entry in entries:
        ids = entry.job_ids or []
        rows.append({
            "entry": entry,
            "ids": [(job_id, reverse("jobs:job", kwargs={"job_id": job_id})) for job_id in ids[:5]],
            "more_ids": max(0, len(ids) - 5),
            "filter": queries.FailureFilter.from_mapping(entry.filter).describe() if entry.scope == "filter" else "",
            "progress_url": reverse("jobs:bulk-progress", kwargs={"entry_id": entry.pk})
            if entry.scope == "filter" else None,
            "numbers": [display.number(n) for n in (entry.requested, entry.changed, entry.refused)],
        })
    context = {
        "section": "audit",
        "rows": rows,
        "action": action,
        "older_url": _with(request, before=older) if older else None,
        "newest_url": _with(request, before=None) if request.GET.get("before") else None,
    }
    return render(request, "jobs/audit.html", context)
