"""Read-only queries of the dashboard: keyset pages of jobs, failure groups, throughput samples.

Every query here walks an index within a LIMIT, or reads a small maintained table (the
queue counters, the failure groups, the per-minute samples): nothing counts or scans the
whole job table, so a page costs the same at ten thousand jobs and at ten million. The one
exception is SQLite, the embedded default, which has no fingerprint triggers: there the
failure groups come from the newest LIVE_GROUP_LIMIT failed jobs.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import F, Func, Max, Min, QuerySet, Sum
from django.db.models.functions import MD5

from jobs.models import AuditEntry, FailureDelta, JobRecord, QueueCounter, QueueSample
from portico.ports.job import ERROR_STATUSES, FAILURE_STATUSES, STATUS_VALUES, JobStatus

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# A text search of error messages reads at most this many of the newest candidate jobs per
# page; the next page carries on below them.
TEXT_WINDOW = 5_000
# Without the PostgreSQL triggers (SQLite), failure groups are built from this many of the
# newest failed jobs; the page says so when there are more.
LIVE_GROUP_LIMIT = 20_000
# The failure groups a page shows, largest first: enough to triage, few enough to render
# fast (each is a row with three links; 100 of them were most of the page's 50 ms budget).
GROUP_LIMIT = 50
FAILURE_VALUES = frozenset(status.value for status in FAILURE_STATUSES)
# A text search looks at the jobs that carry an error, in the enum's order.
ERROR_VALUES = tuple(status.value for status in JobStatus if status in ERROR_STATUSES)
# What a job list row needs; payloads and results stay on the job page.
LIST_FIELDS = ("seq", "id", "queue_name", "job_type", "status", "priority", "retry_count",
               "max_retries", "created_at", "scheduled_at", "started_at", "failed_at",
               "completed_at", "error_message", "attempt")

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_HEX = re.compile(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{8,}\b", re.IGNORECASE)
_NUMBER = re.compile(r"[0-9]+")
_GROUP_KEY = re.compile(r"[0-9a-f]{32}")


def fingerprint(message: str | None) -> str:
    """An error message with its uuids, hex ids and numbers replaced by placeholders.

    The Python twin of the portico_fingerprint() SQL function (migration 0004): errors that
    differ only by an id or a count share a fingerprint, and so a group.
    """
    text = (message or "")[:500]
    text = _UUID.sub("<uuid>", text)
    text = _HEX.sub("<hex>", text)
    return _NUMBER.sub("<n>", text)


def group_key(fingerprint_text: str) -> str:
    """A fingerprint's short, URL-safe name (PostgreSQL's md5() of the same text)."""
    return hashlib.md5(fingerprint_text.encode("utf-8"), usedforsecurity=False).hexdigest()


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def as_uuid(text: str) -> UUID | None:
    try:
        return UUID(text.strip())
    except (ValueError, AttributeError):
        return None


def page_size(value: Any) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        return PAGE_SIZE
    return max(1, min(MAX_PAGE_SIZE, size))


def cursor_value(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


@dataclass(frozen=True)
class Page:
    """One page of jobs, newest first, and the keyset cursors of its neighbours."""

    jobs: list[JobRecord]
    # ?after= for the newer page, ?before= for the older one; None where there is none.
    newer: int | None = None
    older: int | None = None
    # A text search read this far down without filling the page: older matches may remain.
    searched_to: int | None = None


def _page(found: list[JobRecord], size: int, *, before: int | None, after: int | None) -> Page:
    """Cut a page from size + 1 rows read in the direction of travel."""
    more = len(found) > size
    found = found[:size]
    if after is not None:  # read upwards from the cursor: the extra row means newer ones exist
        found.reverse()
        return Page(found, newer=found[0].seq if more and found else None,
                    older=found[-1].seq if found else after + 1)
    return Page(found, newer=found[0].seq if before is not None and found else None,
                older=found[-1].seq if more else None)


def _records(seqs: list[int]) -> list[JobRecord]:
    rows = {job.seq: job for job in JobRecord.objects.filter(seq__in=seqs).only(*LIST_FIELDS)}
    return [rows[seq] for seq in seqs if seq in rows]


# -- one queue's jobs ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    """The queue page's filters: status, job type, creation time and text (an id or error words)."""

    queue: str
    status: str | None = None
    job_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str = ""


def first_seq_at(moment: datetime) -> int | None:
    """The lowest seq of a job created at or after ``moment`` (None: the table is empty).

    Jobs are numbered in the order they are stored, so creation times rise with seq; a
    binary search over the primary key finds the boundary in a few dozen index probes,
    where a filter on created_at (which has no index) would read the table. Exact to
    within the length of one enqueue transaction, and the final query filters on
    created_at as well.
    """
    bounds = JobRecord.objects.aggregate(low=Min("seq"), high=Max("seq"))
    low, high = bounds["low"], bounds["high"]
    if low is None:
        return None
    high += 1
    while low < high:
        middle = (low + high) // 2
        probe = (JobRecord.objects.filter(seq__gte=middle).order_by("seq")
                 .values_list("seq", "created_at").first())
        if probe is None or probe[1] >= moment:
            high = middle
        else:
            low = probe[0] + 1
    return low


def queue_jobs(f: JobFilter, *, before: int | None = None, after: int | None = None,
               size: int = PAGE_SIZE) -> Page:
    """A page of the queue's jobs matching the filter, by keyset on seq (never OFFSET)."""
    size = page_size(size)
    job_id = as_uuid(f.text) if f.text else None
    if job_id is not None:
        return Page(list(JobRecord.objects.filter(queue_name=f.queue, id=job_id).only(*LIST_FIELDS)))
    text = f.text.strip()
    # Words of an error: only jobs that failed, or wait to retry, carry one.
    statuses = [f.status] if f.status else list(ERROR_VALUES if text else STATUS_VALUES)
    low = first_seq_at(f.since) if f.since else None
    high = first_seq_at(f.until) if f.until else None
    if (f.since and low is None) or (low is not None and high is not None and low >= high):
        return Page([])
    if not text:
        window = _window(f, statuses, low, high, before, after, size + 1)
        return _page(_records(window), size, before=before, after=after)
    found, edge = _text_page(f, statuses, low, high, before, after, size)
    page = _page(_records(found), size, before=before, after=after)
    if len(found) <= size and edge is not None and after is None:
        # The window was read to its end without filling the page: carry on below it.
        return Page(page.jobs, newer=page.newer, older=edge, searched_to=edge)
    return page


def _window(f: JobFilter, statuses: list[str], low: int | None, high: int | None,
            before: int | None, after: int | None, limit: int) -> list[int]:
    """Seqs of up to ``limit`` matching jobs nearest the cursor, in the direction of travel."""
    sql, params = _window_sql(f, statuses, low, high, before, after, limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def _window_sql(f: JobFilter, statuses: list[str], low: int | None, high: int | None,
                before: int | None, after: int | None, limit: int,
                text: str | None = None) -> tuple[str, list[Any]]:
    conditions, params = ["queue_name = %s"], [f.queue]
    for clause, value in (("job_type = %s", f.job_type), ("seq >= %s", low), ("seq < %s", high),
                          ("created_at >= %s", f.since), ("created_at < %s", f.until),
                          ("seq < %s", before), ("seq > %s", after)):
        if value is not None and value != "":
            if isinstance(value, datetime) and not is_postgres():
                value = connection.ops.adapt_datetimefield_value(value)
            conditions.append(clause)
            params.append(value)
    if text is not None:
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        # SQLite's LIKE already ignores the case of ASCII letters.
        conditions.append("error_message ILIKE %s" if is_postgres() else "error_message LIKE %s ESCAPE '\\'")
        params.append(f"%{escaped}%")
    order = "ASC" if after is not None else "DESC"
    if is_postgres():
        # One bounded walk of the (queue, status, seq) index per status, merged: the newest
        # jobs of a queue in any status without reading the queue's history. That index
        # leaves running jobs out (the walk says so, or the planner could not use it); they
        # come from portico_job_lease, bounded by the workers' concurrency.
        where = " AND ".join(conditions)
        parts, values = [], []
        walked = [status for status in statuses if status != "running"]
        if walked:
            parts.append("SELECT j.seq FROM unnest(%s::text[]) AS s(status) CROSS JOIN LATERAL ("
                         f"SELECT seq FROM portico_job WHERE {where} AND status = s.status "
                         f"AND status <> 'running' ORDER BY seq {order} LIMIT %s) j")
            values += [walked, *params, limit]
        if len(walked) < len(statuses):
            parts.append(f"(SELECT seq FROM portico_job WHERE {where} AND status = 'running' "
                         f"ORDER BY seq {order} LIMIT %s)")
            values += [*params, limit]
        return (f"SELECT seq FROM ({' UNION ALL '.join(parts)}) w ORDER BY seq {order} LIMIT %s",
                [*values, limit])
    marks = ", ".join(["%s"] * len(statuses))
    sql = (f"SELECT seq FROM portico_job WHERE {' AND '.join(conditions)} AND status IN ({marks}) "
           f"ORDER BY seq {order} LIMIT %s")
    return sql, [*params, *statuses, limit]


def _text_page(f: JobFilter, statuses: list[str], low: int | None, high: int | None,
               before: int | None, after: int | None, size: int) -> tuple[list[int], int | None]:
    """Matches of the error words among the TEXT_WINDOW jobs nearest the cursor.

    First where that window ends (an index-only walk), then the matches, each status's
    walk stopping at a page of them: a common error fills the page in a few rows, a rare
    one reads at most the window. Returns the matches and, when the window was full, its
    far end (where a search for more carries on).
    """
    ascending = after is not None
    window, params = _window_sql(f, statuses, low, high, before, after, TEXT_WINDOW)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*), {'MAX' if ascending else 'MIN'}(seq) FROM ({window}) w", params)
        read, edge = cursor.fetchone()
    if not read:
        return [], None
    bounded_low, bounded_high = (low, edge + 1) if ascending else (max(low or 0, edge), high)
    sql, params = _window_sql(f, statuses, bounded_low, bounded_high, before, after, size + 1, text=f.text.strip())
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = [row[0] for row in cursor.fetchall()]
    return found, (edge if read == TEXT_WINDOW else None)


# -- failed and dead-letter jobs -------------------------------------------------------------


@dataclass(frozen=True)
class FailureFilter:
    """The dead-letter page's filter; ``group`` is a fingerprint's group_key()."""

    status: str = JobStatus.DEAD_LETTER.value
    queue: str | None = None
    job_type: str | None = None
    group: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FailureFilter:
        """Build from request parameters or a stored filter, dropping what is not valid."""
        status = data.get("status") or JobStatus.DEAD_LETTER.value
        group = (data.get("group") or "").strip().lower()
        return cls(
            status=status if status in FAILURE_VALUES else JobStatus.DEAD_LETTER.value,
            queue=(data.get("queue") or "").strip() or None,
            job_type=(data.get("job_type") or "").strip() or None,
            group=group if _GROUP_KEY.fullmatch(group) else None,
        )

    def as_dict(self) -> dict[str, str]:
        values = {"status": self.status, "queue": self.queue, "job_type": self.job_type,
                  "group": self.group}
        return {name: value for name, value in values.items() if value}

    def describe(self) -> str:
        parts = [f"status {self.status}"]
        if self.queue:
            parts.append(f"queue {self.queue}")
        if self.job_type:
            parts.append(f"job type {self.job_type}")
        if self.group:
            parts.append(f"error group {self.group[:8]}")
        return ", ".join(parts)


@dataclass(frozen=True)
class FailureGroup:
    status: str
    queue_name: str
    job_type: str
    fingerprint: str
    count: int
    first_seen: datetime | None
    last_seen: datetime | None
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", group_key(self.fingerprint))

    def filter(self) -> FailureFilter:
        return FailureFilter(self.status, self.queue_name, self.job_type, self.key)


@dataclass(frozen=True)
class FailureGroups:
    groups: list[FailureGroup]
    # False when built from only the newest LIVE_GROUP_LIMIT failures (SQLite).
    complete: bool = True

    @property
    def total(self) -> int:
        return sum(group.count for group in self.groups)


def failure_groups(f: FailureFilter) -> FailureGroups:
    """Every group of failed (or dead-letter) jobs matching the filter, largest first."""
    if is_postgres():
        rows = FailureDelta.objects.filter(status=f.status)
        if f.queue:
            rows = rows.filter(queue_name=f.queue)
        if f.job_type:
            rows = rows.filter(job_type=f.job_type)
        summed = (rows.values("queue_name", "job_type", "fingerprint")
                  .annotate(count=Sum("delta"), first=Min("first_seen"), last=Max("last_seen"))
                  .filter(count__gt=0))
        groups = [FailureGroup(f.status, row["queue_name"], row["job_type"], row["fingerprint"],
                               int(row["count"]), row["first"], row["last"]) for row in summed]
        complete = True
    else:
        groups, complete = _live_groups(f)
    if f.group:
        groups = [group for group in groups if group.key == f.group]
    groups.sort(key=lambda g: (-g.count, g.queue_name, g.job_type, g.fingerprint))
    return FailureGroups(groups, complete)


def _failure_rows(f: FailureFilter) -> QuerySet[JobRecord]:
    rows = JobRecord.objects.filter(status=f.status)
    if f.queue:
        rows = rows.filter(queue_name=f.queue)
    if f.job_type:
        rows = rows.filter(job_type=f.job_type)
    if f.group and is_postgres():
        # The same expression as the portico_job_failure_group index, so the index answers.
        rows = rows.annotate(
            group_key=MD5(Func(F("error_message"), function="portico_fingerprint"))
        ).filter(group_key=f.group)
    return rows


def _live_groups(f: FailureFilter) -> tuple[list[FailureGroup], bool]:
    rows = list(_failure_rows(f).order_by("-seq").values_list(
        "queue_name", "job_type", "error_message", "failed_at")[:LIVE_GROUP_LIMIT + 1])
    complete = len(rows) <= LIVE_GROUP_LIMIT
    found: dict[tuple[str, str, str], list[Any]] = {}
    for queue_name, job_type, error, failed_at in rows[:LIVE_GROUP_LIMIT]:
        entry = found.setdefault((queue_name, job_type, fingerprint(error)), [0, failed_at, failed_at])
        entry[0] += 1
        if failed_at is not None:
            entry[1] = failed_at if entry[1] is None else min(entry[1], failed_at)
            entry[2] = failed_at if entry[2] is None else max(entry[2], failed_at)
    groups = [FailureGroup(f.status, queue, job_type, text, count, first, last)
              for (queue, job_type, text), (count, first, last) in found.items()]
    return groups, complete


def failure_count(f: FailureFilter) -> int:
    """How many jobs the filter matches now: the preview of an action over it."""
    if is_postgres() or f.group:
        return failure_groups(f).total
    return _failure_rows(f).count()


def failure_jobs(f: FailureFilter, *, before: int | None = None, after: int | None = None,
                 size: int = PAGE_SIZE) -> Page:
    """A page of the failed (or dead-letter) jobs matching the filter, newest first."""
    size = page_size(size)
    rows = _failure_rows(f).only(*LIST_FIELDS)
    if f.group and not is_postgres():
        return _python_group_page(f, rows, before=before, after=after, size=size)
    if after is not None:
        found = list(rows.filter(seq__gt=after).order_by("seq")[:size + 1])
    else:
        found = list((rows.filter(seq__lt=before) if before else rows).order_by("-seq")[:size + 1])
    return _page(found, size, before=before, after=after)


def _python_group_page(f: FailureFilter, rows: QuerySet[JobRecord], *, before: int | None,
                       after: int | None, size: int) -> Page:
    """SQLite: the group's jobs picked out in Python, reading at most TEXT_WINDOW rows."""
    ascending = after is not None
    if ascending:
        rows = rows.filter(seq__gt=after).order_by("seq")
    else:
        rows = (rows.filter(seq__lt=before) if before else rows).order_by("-seq")
    found, read, last = [], 0, None
    for job in rows[:TEXT_WINDOW].iterator(chunk_size=500):
        read += 1
        last = job.seq
        if group_key(fingerprint(job.error_message)) == f.group:
            found.append(job)
            if len(found) > size:
                break
    page = _page(found, size, before=before, after=after)
    if len(found) <= size and read == TEXT_WINDOW and not ascending:
        return Page(page.jobs, newer=page.newer, older=last, searched_to=last)
    return page


def highest_seq() -> int:
    return JobRecord.objects.aggregate(top=Max("seq"))["top"] or 0


def failure_where(f: FailureFilter) -> tuple[str, list[Any]] | None:
    """The filter as an SQL condition on portico_job, for actions that lock what they change.

    None where SQL cannot say it: a fingerprint group on SQLite, which has no regular
    expressions (failure_batch() picks those jobs out in Python instead).
    """
    conditions, params = ["status = %s"], [f.status]
    if f.queue:
        conditions.append("queue_name = %s")
        params.append(f.queue)
    if f.job_type:
        conditions.append("job_type = %s")
        params.append(f.job_type)
    if f.group:
        if not is_postgres():
            return None
        conditions.append("md5(portico_fingerprint(error_message)) = %s")
        params.append(f.group)
    return " AND ".join(conditions), params


def failure_batch(f: FailureFilter, after: int, upto: int, limit: int) -> tuple[list[UUID], int | None]:
    """The next matching job ids above seq ``after`` (up to ``upto``), oldest first.

    Returns them with the seq to continue after, or None when nothing is left. Jobs that
    failed again after the action began have the same seq, so they are never taken twice.
    """
    rows = _failure_rows(f).filter(seq__gt=after, seq__lte=upto).order_by("seq")
    if f.group and not is_postgres():
        ids, last = [], None
        for seq, job_id, error in rows.values_list("seq", "id", "error_message")[:limit * 10].iterator():
            last = seq
            if group_key(fingerprint(error)) == f.group:
                ids.append(job_id)
                if len(ids) >= limit:
                    break
        return ids, last
    found = list(rows.values_list("seq", "id")[:limit])
    if not found:
        return [], None
    return [job_id for _, job_id in found], found[-1][0]


# -- the overview's samples, the job page, the audit trail ------------------------------------


def known_queue(name: str) -> bool:
    return QueueCounter.objects.filter(queue_name=name).exists()


def samples_since(moment: datetime) -> dict[str, list[tuple[datetime, int, int]]]:
    """Per queue, the (minute, completed total, failed total) samples since ``moment``, oldest first."""
    found: dict[str, list[tuple[datetime, int, int]]] = {}
    rows = (QueueSample.objects.filter(minute__gte=moment).order_by("minute")
            .values_list("queue_name", "minute", "completed_total", "failed_total"))
    for queue_name, minute, completed, failed in rows:
        found.setdefault(queue_name, []).append((minute, int(completed), int(failed)))
    return found


def job_record(job_id: UUID) -> JobRecord | None:
    return JobRecord.objects.filter(id=job_id).first()


def audit_entries(*, action: str | None = None, before: int | None = None,
                  size: int = PAGE_SIZE) -> tuple[list[AuditEntry], int | None]:
    """A page of the audit trail, newest first, and the cursor of the next (older) page."""
    size = page_size(size)
    entries = AuditEntry.objects.all()
    if action:
        entries = entries.filter(action=action)
    if before:
        entries = entries.filter(id__lt=before)
    found = list(entries.order_by("-id")[:size + 1])
    return found[:size], (found[size - 1].id if len(found) > size else None)


def recent_cutoff(now: datetime, minutes: int) -> datetime:
    return now.replace(second=0, microsecond=0) - timedelta(minutes=minutes)
