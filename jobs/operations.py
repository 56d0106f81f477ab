"""Operator actions (requeue, cancel, discard), each written to the audit trail in the same transaction.

The dashboard and the admin call these and nothing else. Cancel is the queue's own
cancel_job_sync; requeue is requeue_job_sync's steps taken a batch at a time (see
_requeue_where); discard deletes only failed and dead-letter rows it has locked. So what
an action means and which states allow it live in one place, portico.lifecycle, applied
under a row lock: a job whose state no longer allows the action is refused, never forced,
and reported job by job.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.db import close_old_connections, connection, transaction
from django.db.models import F
from django.db.models.functions import Now

from jobs import queries
from jobs.conf import setting
from jobs.models import AuditEntry
from jobs.queue import DatabaseJobQueueAdapter
from jobs.services import job_queue
from portico import lifecycle
from portico.exceptions import InvalidJobStateError
from portico.lifecycle import REQUEUEABLE
from portico.ports.job import Job, JobStatus

log = logging.getLogger("portico.dashboard")

ACTIONS = ("requeue", "cancel", "discard")
# Only these run over a filter (the dead-letter page's); cancel is for jobs chosen by id.
FILTER_ACTIONS = ("requeue", "discard")
SOURCES = ("dashboard", "admin")
# The most jobs one action may name by id; more goes through an action over a filter.
MAX_CHOSEN = 500
DISCARDABLE = frozenset(status.value for status in REQUEUEABLE)

@dataclass(frozen=True)
class Outcome:
    """What an action did, job by job."""

    entry: AuditEntry
    changed: list[UUID] = field(default_factory=list)
    # Each job asked for and left as it was, with the reason.
    refused: dict[UUID, str] = field(default_factory=dict)


Results = tuple[list[UUID], dict[UUID, str]]


def _ids_where(queue: DatabaseJobQueueAdapter, ids: Sequence[UUID]) -> tuple[str, list[Any]]:
    if queue.is_postgres:  # one array parameter, not a thousand placeholders to parse
        return "id = ANY(%s)", [list(ids)]
    return f"id IN ({', '.join(['%s'] * len(ids))})", [queue._param_uuid(i) for i in ids]


def _requeue_where(where: str, params: list[Any],
                   limit: int | None = None) -> tuple[list[tuple[int, Job]], Results]:
    """requeue_job_sync for every job matching ``where`` (up to ``limit``, oldest first).

    The adapter's own steps for one requeue (lock the rows, apply lifecycle.requeued,
    write them with _apply, wake the workers after commit), taken once per batch rather
    than once per job: a job at a time, 50,000 dead letters took 80 s, a batch at a time
    under 10 s. The adapter has no public batch requeue yet; this belongs there as
    requeue_many_sync. Returns the locked (seq, job) as they were, and what changed.
    """
    queue, refused = job_queue(), {}
    with queue._writing() as cursor:
        locked = queue._locked_jobs(cursor, where, params, limit=limit)
        now = queue._now(cursor)
        changes = []
        for seq, attempt, job in locked:
            try:
                changes.append((seq, attempt, job, lifecycle.requeued(job), None))
            except InvalidJobStateError as exc:
                refused[job.id] = str(exc)
        queue._apply(cursor, now, changes)
    if changes:
        transaction.on_commit(queue._wake_waiters)
        queue._dispatch_on_commit({job.queue_name for _, _, job, _, _ in changes})
    return [(seq, job) for seq, _, job in locked], ([job.id for _, _, job, _, _ in changes], refused)


def _discard_where(where: str, params: list[Any],
                   limit: int | None = None) -> tuple[list[tuple[int, UUID, str]], list[UUID]]:
    """Delete the failed and dead-letter jobs matching ``where`` (with their attempt history).

    Returns every row the condition locked as (seq, id, status), and the ids deleted.
    """
    sql = f"SELECT seq, id, status FROM portico_job WHERE {where} ORDER BY seq"
    if limit:
        sql += f" LIMIT {int(limit)}"
    if connection.vendor == "postgresql":
        sql += " FOR UPDATE"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        locked = [(seq, job_id if isinstance(job_id, UUID) else UUID(job_id), status)
                  for seq, job_id, status in cursor.fetchall()]
        doomed = [seq for seq, _, status in locked if status in DISCARDABLE]
        if doomed:
            # Attempts first: they point at the job rows (what prune does as well).
            marks = ", ".join(["%s"] * len(doomed))
            cursor.execute(f"DELETE FROM portico_job_attempt WHERE job_seq IN ({marks})", doomed)
            cursor.execute(f"DELETE FROM portico_job WHERE seq IN ({marks})", doomed)
    return locked, [job_id for _, job_id, status in locked if status in DISCARDABLE]


def _requeue(ids: Sequence[UUID]) -> Results:
    if not ids:
        return [], {}
    where, params = _ids_where(job_queue(), ids)
    locked, (changed, refused) = _requeue_where(where, params)
    found = {job.id for _, job in locked}
    refused.update({job_id: "no job has this id" for job_id in ids if job_id not in found})
    done = set(changed)
    return [job_id for job_id in ids if job_id in done], refused


def _cancel(ids: Sequence[UUID]) -> Results:
    queue, changed, refused = job_queue(), [], {}
    for job_id in ids:
        if queue.cancel_job_sync(job_id):
            changed.append(job_id)
            continue
        job = queue.get_job_sync(job_id)
        refused[job_id] = ("no job has this id" if job is None else
                           f"cannot cancel job {job_id}: it is {job.status.value}; only a job "
                           "not yet running can be cancelled")
    return changed, refused


def _discard(ids: Sequence[UUID]) -> Results:
    if not ids:
        return [], {}
    where, params = _ids_where(job_queue(), ids)
    locked, deleted = _discard_where(where, params)
    states = {job_id: status for _, job_id, status in locked}
    gone = set(deleted)
    refused = {
        job_id: ("no job has this id" if job_id not in states else
                 f"cannot discard job {job_id}: it is {states[job_id]}; only failed and "
                 "dead-letter jobs can be discarded")
        for job_id in ids if job_id not in gone
    }
    return [job_id for job_id in ids if job_id in gone], refused


_RUN: dict[str, Callable[[Sequence[UUID]], Results]] = {
    "requeue": _requeue, "cancel": _cancel, "discard": _discard,
}


def past_tense(action: str) -> str:
    """What a message says was done: "requeued", "cancelled", "discarded"."""
    if action.endswith("e"):
        return action + "d"
    if action.endswith("el"):  # spelt as the error a cancelled job carries, "Job cancelled"
        return action + "led"
    return action + "ed"


def _actor(user) -> tuple[object | None, str]:
    if user is None or not getattr(user, "is_authenticated", False):
        return None, "(system)"
    return user, user.get_username()


def act_on_jobs(action: str, job_ids: Iterable[UUID], *, user, source: str = "dashboard") -> Outcome:
    """Apply the action to each job named, and record it; one transaction for all of them."""
    if action not in ACTIONS or source not in SOURCES:
        raise ValueError(f"unknown action {action!r} or source {source!r}")
    ids = list(dict.fromkeys(job_ids))
    if len(ids) > MAX_CHOSEN:
        raise ValueError(f"at most {MAX_CHOSEN} jobs can be named at once; use an action over a filter")
    actor, name = _actor(user)
    with transaction.atomic():
        changed, refused = _RUN[action](ids)
        entry = AuditEntry.objects.create(
            actor=actor, actor_name=name, action=action, source=source, scope="jobs",
            job_ids=[str(job_id) for job_id in ids], requested=len(ids), changed=len(changed),
            refused=len(refused), finished_at=Now(),
        )
    if refused:
        log.info("%s %s by %s: %d changed, %d refused", source, action, name, len(changed), len(refused))
    return Outcome(entry, changed, refused)


def start_on_filter(action: str, f: queries.FailureFilter, *, user,
                    source: str = "dashboard") -> AuditEntry:
    """Record an action over every job the filter matches now; run_on_filter() carries it out.

    The jobs it can reach are bounded by the highest seq at this moment: jobs that fail
    later are not swept up by an action the operator previewed before they existed.
    """
    if action not in FILTER_ACTIONS or source not in SOURCES:
        raise ValueError(f"unknown action {action!r} or source {source!r}")
    actor, name = _actor(user)
    return AuditEntry.objects.create(
        actor=actor, actor_name=name, action=action, source=source, scope="filter",
        filter={**f.as_dict(), "upto_seq": queries.highest_seq()},
        requested=queries.failure_count(f),
    )


def run_on_filter(entry_id: int, *, batch: int | None = None) -> AuditEntry:
    """Carry out a recorded action over a filter, one batch per transaction.

    Each batch locks only its own jobs and adds its counts to the audit entry in the same
    transaction, so workers keep running, and a run that stops half-way (the process
    died) is recorded exactly as far as it got; starting the action again finishes it.
    """
    batch = int(batch or setting("PORTICO_BULK_BATCH"))
    entry = AuditEntry.objects.get(pk=entry_id, scope="filter")
    f = queries.FailureFilter.from_mapping(entry.filter)
    upto = int(entry.filter["upto_seq"])
    try:
        after: int | None = 0
        while after is not None:
            with transaction.atomic():
                after, changed, refused = _filter_batch(entry.action, f, after, upto, batch)
                if changed or refused:
                    AuditEntry.objects.filter(pk=entry_id).update(
                        changed=F("changed") + changed, refused=F("refused") + refused)
    except Exception as exc:
        log.exception("the %s over %s (audit entry %d) stopped", entry.action, f.describe(), entry_id)
        AuditEntry.objects.filter(pk=entry_id).update(error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        AuditEntry.objects.filter(pk=entry_id).update(finished_at=Now())
    entry.refresh_from_db()
    return entry


def _filter_batch(action: str, f: queries.FailureFilter, after: int, upto: int,
                  batch: int) -> tuple[int | None, int, int]:
    """One batch above seq ``after``: (seq to continue after or None when done, changed, refused)."""
    condition = queries.failure_where(f)
    if condition is None:  # picked out in Python, then changed by id
        ids, next_after = queries.failure_batch(f, after, upto, batch)
        changed, refused = _RUN[action](ids) if ids else ([], {})
        return next_after, len(changed), len(refused)
    where, params = condition
    where, params = f"{where} AND seq > %s AND seq <= %s", [*params, after, upto]
    if action == "requeue":
        locked, (changed, refused) = _requeue_where(where, params, limit=batch)
        last = locked[-1][0] if locked else None
    else:
        rows, deleted = _discard_where(where, params, limit=batch)
        changed, refused = deleted, {}
        last = rows[-1][0] if rows else None
    return last, len(changed), len(refused)


def run_in_background(entry_id: int) -> threading.Thread:
    """Run an action over a filter on a thread of this process, so the request returns at once."""

    def run() -> None:
        try:
            # A failure is logged and recorded on the audit entry by run_on_filter itself.
            with contextlib.suppress(Exception):
                run_on_filter(entry_id)
        finally:
            # The thread's own connection: closed here, or it lingers until the process ends.
            close_old_connections()
            connection.close()

    thread = threading.Thread(target=run, name=f"portico-action-{entry_id}", daemon=True)
    thread.start()
    return thread


def is_waiting(status: str) -> bool:
    return JobStatus(status).is_waiting


def is_requeueable(status: str) -> bool:
    return status in DISCARDABLE
