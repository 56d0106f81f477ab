"""The dashboard's actions: POST only, for operators, CSRF-checked; each one calls jobs.operations.

A browser without JavaScript posts a form and is sent back where it came from with a
message; HTMX gets the changed row in place (and, on the dead-letter page, the updated
counts beside it).
"""
from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.db import transaction
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
)
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from jobs import operations, queries
from jobs.views.access import operator_required
from jobs.views.pages import bulk_url, failure_context, job_row

CONFIRM_WORD = "discard"


class HttpResponseSeeOther(HttpResponseRedirect):
    """After a POST, GET the page named (303), never re-POST to it."""

    status_code = 303


def _next(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return target
    return fallback


def _report(request: HttpRequest, action: str, outcome: operations.Outcome) -> None:
    if outcome.changed:
        count = len(outcome.changed)
        done = operations.past_tense(action).capitalize()
        messages.success(request, f"{done} {count} job{'s' if count != 1 else ''}.")
    for reason in list(outcome.refused.values())[:5]:
        messages.error(request, f"Refused: {reason}")
    if len(outcome.refused) > 5:
        messages.error(request, f"… and {len(outcome.refused) - 5} more refused.")


def _confirmed(request: HttpRequest) -> bool:
    return (request.POST.get("confirm") or "").strip() == CONFIRM_WORD


# -- one job -------------------------------------------------------------------------------


def _one(request: HttpRequest, job_id: UUID, action: str) -> HttpResponse:
    if queries.job_record(job_id) is None:
        raise Http404("no job has this id")
    job_page = reverse("jobs:job", kwargs={"job_id": job_id})
    if action == "discard" and not _confirmed(request):
        messages.error(request, f"Nothing discarded: type “{CONFIRM_WORD}” to confirm.")
        return HttpResponseSeeOther(_next(request, job_page))
    outcome = operations.act_on_jobs(action, [job_id], user=request.user)
    row = request.POST.get("row")
    if request.htmx and row in ("dead_letter", "queue"):
        return _row(request, job_id, row, outcome)
    _report(request, action, outcome)
    fallback = reverse("jobs:dead-letter") if action == "discard" and outcome.changed else job_page
    return HttpResponseSeeOther(_next(request, fallback))


def _row(request: HttpRequest, job_id: UUID, row: str, outcome: operations.Outcome) -> HttpResponse:
    """The job's row as it is now, and on the dead-letter page the counts and groups too."""
    job = queries.job_record(job_id)
    context = {
        "row": job_row(job) if job is not None else None,
        "job_id": job_id,
        "notice": next(iter(outcome.refused.values()), None),
        "changed": bool(outcome.changed),
        "action": outcome.entry.action,
        "can_operate": True,
        "next": request.POST.get("next") or "",
    }
    if row == "queue":
        return HttpResponse(render_to_string("jobs/partials/queue_row.html", context, request))
    html = render_to_string("jobs/partials/failure_row.html", context, request)
    f = queries.FailureFilter.from_mapping(request.POST)
    summary = {**failure_context(request, f), "oob": True}
    # In a <template>: after a <tr>, a bare <section> would be parsed in table context and
    # mangled; htmx swaps out-of-band elements found inside templates and drops the wrapper.
    html += f'<template>{render_to_string("jobs/dead_letter.html#failure-summary", summary, request).strip()}</template>'
    return HttpResponse(html)


@require_POST
@operator_required
def job_requeue(request: HttpRequest, job_id: UUID) -> HttpResponse:
    return _one(request, job_id, "requeue")


@require_POST
@operator_required
def job_cancel(request: HttpRequest, job_id: UUID) -> HttpResponse:
    return _one(request, job_id, "cancel")


@require_POST
@operator_required
def job_discard(request: HttpRequest, job_id: UUID) -> HttpResponse:
    return _one(request, job_id, "discard")


# -- jobs chosen on the dead-letter page -----------------------------------------------------


@require_POST
@operator_required
def chosen_jobs(request: HttpRequest) -> HttpResponse:
    """Requeue or discard the jobs ticked on the dead-letter page."""
    action = request.POST.get("action")
    if action not in operations.FILTER_ACTIONS:
        return HttpResponseBadRequest("action must be requeue or discard")
    ids = [queries.as_uuid(value) for value in request.POST.getlist("job")]
    if any(job_id is None for job_id in ids):
        return HttpResponseBadRequest("a job id is not a valid id")
    back = _next(request, reverse("jobs:dead-letter"))
    if not ids:
        messages.warning(request, "Tick at least one job first.")
        return HttpResponseSeeOther(back)
    if len(ids) > operations.MAX_CHOSEN:
        messages.error(request, f"At most {operations.MAX_CHOSEN} jobs at once: use the action over the filter.")
        return HttpResponseSeeOther(back)
    if action == "discard" and not _confirmed(request):
        messages.error(request, f"Nothing discarded: type “{CONFIRM_WORD}” to confirm.")
        return HttpResponseSeeOther(back)
    _report(request, action, operations.act_on_jobs(action, ids, user=request.user))
    return HttpResponseSeeOther(back)


# -- every job matching a filter -----------------------------------------------------------


@require_POST
@operator_required
def bulk_start(request: HttpRequest) -> HttpResponse:
    """Start a previewed action over a filter; it runs in batches while its progress page polls."""
    action = request.POST.get("action")
    if action not in operations.FILTER_ACTIONS:
        return HttpResponseBadRequest("action must be requeue or discard")
    f = queries.FailureFilter.from_mapping(request.POST)
    if action == "discard" and not _confirmed(request):
        messages.error(request, f"Nothing discarded: type “{CONFIRM_WORD}” to confirm.")
        return HttpResponseSeeOther(bulk_url(action, f))
    entry = operations.start_on_filter(action, f, user=request.user)
    # The run's thread reads the entry: only once it is committed.
    transaction.on_commit(lambda: operations.run_in_background(entry.pk))
    return HttpResponseSeeOther(reverse("jobs:bulk-progress", kwargs={"entry_id": entry.pk}))
