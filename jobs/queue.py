"""DatabaseJobQueueAdapter: the queue port over PostgreSQL (or SQLite), where all the hot SQL lives."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from django.db import IntegrityError, connections, transaction
from django.utils.dateparse import parse_datetime
from django.utils.module_loading import import_string

from jobs.conf import setting
from portico import lifecycle
from portico.adapters.job_queue.memory_queue import queue_names
from portico.exceptions import (
    DuplicateJobError,
    InvalidJobStateError,
    JobNotFoundError,
    PorticoError,
)
from portico.ports.job import WAITING_STATUSES, WAITING_VALUES, Job, JobAttempt, JobStatus, QueueStats
from portico.ports.job_queue import JobQueueAdapter
from portico.validation import check_job, check_json, clean_text

log = logging.getLogger("portico.queue")
T = TypeVar("T")

CHANNEL = "portico_jobs"
COLUMNS = (
    "seq, id, queue_name, job_type, payload, priority, max_retries, retry_count, scheduled_at, "
    "started_at, completed_at, failed_at, status, error_message, created_by, created_at, metadata"
)
# The same columns of portico_job aliased j, where a statement joins it to something else.
J_COLUMNS = ", ".join("j." + c.strip() for c in COLUMNS.split(","))
WAITING_SQL = "(" + ", ".join(f"'{status}'" for status in WAITING_VALUES) + ")"
# The statuses every job passes through, which the portico_job_status index leaves out (its
# condition in jobs.models lists the others): listed across queues per queue instead.
BUSY_STATUSES = tuple(s.value for s in (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.COMPLETED))
# The hot statements on PostgreSQL: a claim from one queue, a claim across several (best
# per queue through each queue's index, then best across them), and an acknowledgement.
_CLAIMED = (
    "UPDATE portico_job j SET status = 'running', started_at = now(), "
    "attempt = j.attempt + 1, lease_expires_at = now() + %s * interval '1 second' "
    f"FROM next WHERE j.seq = next.seq RETURNING {J_COLUMNS}"
)
CLAIM_ONE = (
    "WITH next AS (SELECT seq FROM portico_job WHERE queue_name = %s "
    f"AND status IN {WAITING_SQL} AND run_at <= now() "
    "ORDER BY priority DESC, seq LIMIT %s FOR UPDATE SKIP LOCKED) " + _CLAIMED
)
CLAIM_ACROSS = (
    "WITH next AS (SELECT c.seq FROM unnest(%s::text[]) AS q(name) CROSS JOIN LATERAL ("
    "SELECT seq, priority FROM portico_job WHERE queue_name = q.name "
    f"AND status IN {WAITING_SQL} AND run_at <= now() "
    "ORDER BY priority DESC, seq LIMIT %s FOR UPDATE SKIP LOCKED) c "
    "ORDER BY c.priority DESC, c.seq LIMIT %s) " + _CLAIMED
)
# Only what changed comes back: the claims already hold the rest of each job. The arrays go
# in binary (%b): psycopg's text dumping of 100 ids, times and results took ~12 us a job of
# the worker's CPU (quoting each element), the binary dumpers ~2 us.
ACKNOWLEDGE = (
    "UPDATE portico_job j SET status = 'completed', completed_at = now(), "
    "result_data = v.result, lease_expires_at = NULL "
    "FROM unnest(%b::uuid[], %b::timestamptz[], %b::jsonb[]) AS v(id, started_at, result) "
    "WHERE j.id = v.id AND j.status = 'running' "
    "AND (v.started_at IS NULL OR j.started_at = v.started_at) "
    "RETURNING j.id, j.completed_at"
)
INSERT_CHUNK = 1000
INSERT_COLUMNS = (
    "id, queue_name, job_type, payload, priority, max_retries, retry_count, scheduled_at, status, "
    "created_by, created_at, metadata, run_at, attempt"
)
# Prepared once per connection as "portico_enqueue_one"; parameters as text, with their types.
INSERT_ONE = (
    f"INSERT INTO portico_job ({INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
    "now(), $11, coalesce($8, now()), 0) RETURNING created_at"
)
INSERT_ONE_TYPES = ("uuid", "text", "text", "jsonb", "int4", "int4", "int4", "timestamptz", "text",
                    "uuid", "jsonb")
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # a binary timestamptz counts microseconds from it
COPY_IN = f"COPY portico_job ({INSERT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
COPY_TYPES = ("uuid", "text", "text", "jsonb", "int4", "int4", "int4", "timestamptz", "text",
              "uuid", "timestamptz", "jsonb", "timestamptz", "int4")
TRANSITION_CHUNK = 500
TOTALS = ("enqueued", "completed", "failed", "dead_lettered", "retried")
# How long an acknowledgement waits for others to share its statement (seconds); those that
# arrive while a batch is being written go in the next one without waiting. 0 means the next
# turn of the event loop: on the acknowledgement probe a 1-2 ms window halved the rate of a
# lone worker and gained nothing under load, where the batch in flight does the gathering.
ACK_WINDOW = 0.0
# Per database alias, how many times this process found a connection broken; and, per
# thread, the count at which its own connection was last checked (see _run_sync).
_breakages: dict[str, int] = {}
_checked = threading.local()


@functools.cache
def _jsonb_text_dumper() -> type:
    """COPY's binary jsonb from JSON text already checked: a version byte, then the UTF-8."""
    from psycopg import adapt, postgres, pq

    class JsonbText(adapt.Dumper):
        format = pq.Format.BINARY
        oid = postgres.types["jsonb"].oid

        def dump(self, obj: str) -> bytes:
            return b"\x01" + obj.encode()

    return JsonbText


_raw_decode = json.JSONDecoder().raw_decode


def _parsed(text: str) -> Any:
    """JSON text we wrote (check_json) or PostgreSQL wrote: no whitespace around it to skip,
    no encoding to sniff, and most often an empty object."""
    return {} if text == "{}" else _raw_decode(text)[0]


@functools.cache
def _jsonb_loader() -> type:
    """jsonb in the hot statements' binary results: a version byte, then the JSON text.

    psycopg's own loader sniffs the encoding of every value and checks for whitespace
    around it (json.loads); the text PostgreSQL writes needs neither, and most metadata
    is an empty object. Two values a claimed job: ~35% of the worker's CPU before.
    """
    from psycopg import adapt, errors, pq

    class JsonbLoader(adapt.Loader):
        format = pq.Format.BINARY

        def load(self, data: Any) -> Any:
            if data == b"\x01{}":  # most metadata: no copy, no decode
                return {}
            if data[:1] != b"\x01":
                raise errors.DataError("unknown jsonb binary format")
            return _raw_decode(bytes(data[1:]).decode())[0]

    return JsonbLoader


# The connections (psycopg's pgconn) on which INSERT_ONE is prepared.
_prepared_insert: weakref.WeakSet[Any] = weakref.WeakSet()


# A psycopg prepare_threshold at which only the statements executed with prepare=True are
# prepared (the hot ones); Django's own queries never reach it. None turns preparing off.
ONLY_WHEN_ASKED = 2**31 - 1


def _insert_prepared(connection: Any, params: list[bytes | None], prepare: bool = True) -> datetime:
    """Run INSERT_ONE (prepared on first use) on a psycopg connection; the created_at it returns.

    With ``prepare`` false the statement goes unnamed, as poolers without prepared
    statements need (PORTICO_PREPARED_STATEMENTS off). Inside a transaction too: psycopg
    answers a ROLLBACK (to a savepoint) with DEALLOCATE ALL once it has prepared statements
    of its own, and a vanished statement would abort the caller's transaction.
    """
    from psycopg import postgres, pq

    with connection.lock:
        pgconn = connection.pgconn
        if not prepare or pgconn.transaction_status != pq.TransactionStatus.IDLE:
            types = [postgres.types[name].oid for name in INSERT_ONE_TYPES]
            result = pgconn.exec_params(INSERT_ONE.encode(), params, types, None, 1)
            if result.status == pq.ExecStatus.TUPLES_OK:
                return _PG_EPOCH + timedelta(
                    microseconds=int.from_bytes(result.get_value(0, 0), "big", signed=True))
            raise _error(connection, result)
        for _ in range(2):
            if pgconn not in _prepared_insert:
                types = [postgres.types[name].oid for name in INSERT_ONE_TYPES]
                result = pgconn.prepare(b"portico_enqueue_one", INSERT_ONE.encode(), types)
                if result.status != pq.ExecStatus.COMMAND_OK:
                    raise _error(connection, result)
                _prepared_insert.add(pgconn)
            result = pgconn.exec_prepared(b"portico_enqueue_one", params, None, 1)
            if result.status == pq.ExecStatus.TUPLES_OK:
                return _PG_EPOCH + timedelta(
                    microseconds=int.from_bytes(result.get_value(0, 0), "big", signed=True))
            if result.error_field(pq.DiagnosticField.SQLSTATE) != b"26000":
                break
            # Dropped behind our back (DEALLOCATE ALL, DISCARD ALL): prepare it again, and
            # outside a transaction, where the failure broke nothing, try once more.
            _prepared_insert.discard(pgconn)
            if pgconn.transaction_status != pq.TransactionStatus.IDLE:
                break
    raise _error(connection, result)


def _error(connection: Any, result: Any) -> Exception:
    """The psycopg error a failed result stands for, as psycopg's own cursor would raise it."""
    from psycopg import errors, pq

    if connection.pgconn.status == pq.ConnStatus.BAD:  # libpq gives no SQLSTATE for a lost line
        return errors.OperationalError(result.get_error_message(connection.info.encoding))
    return errors.error_from_result(result, encoding=connection.info.encoding)


class DatabaseJobQueueAdapter(JobQueueAdapter):
    """Jobs in the ``portico_job`` table of a Django database (PostgreSQL or SQLite).

    Every async operation has a synchronous twin (``enqueue_sync``, ``dequeue_sync``, …)
    for Celery tasks, views and the admin; the async ones run the twin on the adapter's own
    threads, so the event loop never blocks, except the worker's hot path on PostgreSQL:
    claims and acknowledgements are awaited on the event loop's own connections
    (``_LoopConnections``). Claims use ``FOR UPDATE SKIP LOCKED`` on
    PostgreSQL; SQLite serializes writers with ``BEGIN IMMEDIATE``. Counts come from the
    ``portico_queue_counter`` table, which database triggers keep in the same transaction as
    every change, so statistics never count the job table.
    """

    def __init__(
        self,
        using: str = "default",
        *,
        lease_seconds: float | None = None,
        max_payload_bytes: int | None = None,
        poll_interval: float | None = None,
        threads: int = 4,
        ack_window: float = ACK_WINDOW,
    ) -> None:
        self.using = using
        self.lease_seconds = float(
            lease_seconds if lease_seconds is not None else setting("PORTICO_LEASE_SECONDS")
        )
        self.max_payload_bytes = (
            max_payload_bytes if max_payload_bytes is not None
            else setting("PORTICO_MAX_PAYLOAD_BYTES")
        )
        self.poll_interval = float(
            poll_interval if poll_interval is not None else setting("PORTICO_POLL_INTERVAL")
        )
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._waiters: dict[asyncio.Future[None], asyncio.AbstractEventLoop] = {}
        self._waiters_lock = threading.Lock()
        self._listener: _Listener | None = None
        self.ack_window = ack_window
        # Claims, acknowledgements and single enqueues as server-side prepared statements.
        self.prepared_statements = bool(setting("PORTICO_PREPARED_STATEMENTS"))
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AckBatcher] = (
            weakref.WeakKeyDictionary())
        self._batchers_lock = threading.Lock()
        self._last_batcher: _AckBatcher | None = None
        self._loop_conns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnections] = (
            weakref.WeakKeyDictionary())
        self._on_loop: bool | None = None  # see _hot_on_loop

    # -- plumbing ------------------------------------------------------------------------

    @property
    def connection(self):
        return connections[self.using]

    @property
    def is_postgres(self) -> bool:
        return self.connection.vendor == "postgresql"

    def _now(self, cursor) -> datetime:
        """The database's clock (SQLite has none apart from the machine's)."""
        if self.is_postgres:
            cursor.execute("SELECT now()")
            return cursor.fetchone()[0]
        return datetime.now(UTC)

    def _param_time(self, value: datetime | None) -> Any:
        if value is None or self.is_postgres:
            return value
        return self.connection.ops.adapt_datetimefield_value(value)

    def _param_uuid(self, value: UUID | None) -> Any:
        if value is None or self.is_postgres:
            return value
        return value.hex

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Any]:
        """A cursor inside a transaction: IMMEDIATE on SQLite, so writers queue, not fail."""
        with transaction.atomic(using=self.using), self.connection.cursor() as cursor:
            yield cursor

    def _run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._check_after_breakage()
        try:
            return fn(*args, **kwargs)
        finally:
            # A long-lived thread must not keep a connection Django has given up on: one
            # that failed, or outlived CONN_MAX_AGE. Only then, because the check also
            # re-arms Django's health check, a round trip of its own before the next call.
            conn = self.connection
            if conn.connection is not None and not conn.in_atomic_block and (
                conn.errors_occurred
                or (conn.close_at is not None and time.monotonic() >= conn.close_at)
            ):
                failed = conn.errors_occurred
                conn.close_if_unusable_or_obsolete()
                if failed and conn.connection is None:
                    _breakages[self.using] = _breakages.get(self.using, 0) + 1

    def _check_after_breakage(self) -> None:
        """Once a connection was found broken, check this thread's before its next statement.

        A database restart breaks every connection at once. One that sat idle meanwhile
        would fail its first statement afterwards: on the acknowledgement path, an outcome
        lost and the job run again once its lease ran out. One round trip per thread, only
        after a breakage.
        """
        breakages = _breakages.get(self.using, 0)
        seen = getattr(_checked, "counts", None)
        if seen is None:
            seen = _checked.counts = {}
        if seen.get(self.using, 0) == breakages:
            return
        seen[self.using] = breakages
        conn = self.connection
        if conn.connection is not None and not conn.in_atomic_block and not conn.is_usable():
            conn.close()

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="portico-db")
            return self._executor

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), lambda: self._run_sync(fn, *args, **kwargs))

    async def initialize(self) -> None:
        self._pool()

    async def close(self) -> None:
        self._last_batcher = None  # it would keep its event loop alive
        loop = asyncio.get_running_loop()
        with self._batchers_lock:
            batcher = self._batchers.get(loop)
            own = self._loop_conns.pop(loop, None)
        if batcher is not None:
            await batcher.drained()
        if own is not None:
            await own.close()
        self.close_sync()

    def close_sync(self) -> None:
        # The connections of loops that no longer run; a running loop's close its own.
        with self._batchers_lock:
            idle = [(loop, own) for loop, own in self._loop_conns.items() if not loop.is_running()]
            for loop, _ in idle:
                del self._loop_conns[loop]
        for _, own in idle:
            own.finish()
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            # Each thread closes its own connection: one task per thread, held at a barrier.
            barrier = threading.Barrier(self._threads)

            def close_own_connection() -> None:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=5)
                connections[self.using].close()

            for _ in range(self._threads):
                executor.submit(close_own_connection)
            executor.shutdown(wait=True)

    # -- rows ----------------------------------------------------------------------------

    @staticmethod
    def _time(value: Any) -> datetime | None:
        """A stored time as an aware UTC datetime (SQLite hands back naive UTC text)."""
        if value is None:
            return None
        if isinstance(value, str):
            value = parse_datetime(value)
        tz = value.tzinfo
        if tz is UTC:  # PostgreSQL's, on a connection in UTC as Django keeps it
            return value
        return value.replace(tzinfo=UTC) if tz is None else value.astimezone(UTC)

    def _job(self, row: Sequence[Any]) -> Job:
        """The Job a row holds, built without Job's constructor.

        The row passed the job's checks when it was stored, and a claim decodes one per job,
        in the raw claim loop too: the frozen dataclass's ``__init__`` (a ``setattr`` per
        field, then ``__post_init__``) was most of that. Its one rule is kept here: a
        pending job with a time to run is scheduled.
        """
        (_seq, job_id, queue_name, job_type, payload, priority, max_retries, retry_count,
         scheduled_at, started_at, completed_at, failed_at, status, error_message, created_by,
         created_at, metadata) = row
        time = self._time
        status = _STATUSES.get(status) or JobStatus(status)  # JobStatus() names a bad value
        if status is JobStatus.PENDING and scheduled_at is not None:
            status = JobStatus.SCHEDULED
        job = object.__new__(Job)
        job.__dict__.update(
            id=job_id if isinstance(job_id, UUID) else UUID(job_id),
            queue_name=queue_name,
            job_type=job_type,
            payload=json.loads(payload) if isinstance(payload, str | bytes) else payload,
            priority=priority,
            max_retries=max_retries,
            retry_count=retry_count,
            scheduled_at=time(scheduled_at),
            started_at=time(started_at),
            completed_at=time(completed_at),
            failed_at=time(failed_at),
            status=status,
            error_message=error_message,
            created_by=None if created_by is None else (
                created_by if isinstance(created_by, UUID) else UUID(created_by)),
            created_at=time(created_at),
            metadata=json.loads(metadata) if isinstance(metadata, str | bytes) else metadata,
        )
        return job

    # -- enqueue -------------------------------------------------------------------------

    async def enqueue(self, job: Job) -> Job:
        return (await self._call(self.enqueue_many_sync, [job]))[0]

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[Job]:
        return await self._call(self.enqueue_many_sync, jobs)

    def enqueue_sync(self, job: Job) -> Job:
        return self.enqueue_many_sync([job])[0]

    def enqueue_many_sync(self, jobs: Sequence[Job]) -> list[Job]:
        """Store the jobs, all of them or none, each checked before anything is written.

        On PostgreSQL one job outside a transaction is one prepared statement, committed by
        itself: a single round trip. Several jobs go in one binary COPY in a transaction.
        Inside the caller's transaction a savepoint keeps a duplicate id from breaking it.
        """
        jobs = list(jobs)
        if not jobs:
            return []
        limit = self.max_payload_bytes
        encoded = [check_job(job, limit) for job in jobs]
        ids = [job.id for job in jobs]
        if len(set(ids)) != len(ids):
            raise DuplicateJobError("the same job id appears twice in one enqueue")
        conn = self.connection
        try:
            if conn.vendor != "postgresql":
                stored = self._insert_sqlite(jobs, encoded)
            elif len(jobs) == 1 and not conn.in_atomic_block:
                stored = [self._insert_one(conn, jobs[0], *encoded[0])]
            else:
                with transaction.atomic(using=self.using):
                    if len(jobs) == 1:
                        # After the savepoint, for which psycopg opened the transaction: a
                        # libpq call made directly, as _insert_one's is, would not open one.
                        stored = [self._insert_one(conn, jobs[0], *encoded[0])]
                    else:
                        stored = self._copy_in(conn, jobs, encoded)
        except IntegrityError as exc:
            existing = self._existing_ids(ids)
            raise DuplicateJobError(
                f"a job with id {existing[0] if existing else ids[0]} already exists"
            ) from exc
        conn.on_commit(self._wake_waiters)
        now = datetime.now(UTC)
        self._dispatch_on_commit(
            job.queue_name for job in stored if job.scheduled_at is None or job.scheduled_at <= now)
        return stored

    @staticmethod
    def _stored(job: Job, payload: str, metadata: str, created_at: datetime) -> Job:
        """The job as the database now holds it, built without re-running the checks it passed."""
        at = job.scheduled_at
        new = object.__new__(Job)
        new.__dict__.update(
            job.__dict__,
            payload=_parsed(payload),
            metadata=_parsed(metadata) if job.metadata else {},
            created_at=created_at,
            status=JobStatus.SCHEDULED if at else JobStatus.PENDING,
            scheduled_at=at.astimezone(UTC) if at else None,
            started_at=None, completed_at=None, failed_at=None, error_message=None,
        )
        return new

    def _insert_one(self, conn: Any, job: Job, payload: str, metadata: str) -> Job:
        """One job in one prepared statement, its creation time from the database clock.

        The statement goes through psycopg's ``pgconn`` (libpq) directly: psycopg's cursor
        machinery doubled the client's CPU per enqueue (~100 us against ~50 us).
        """
        at = job.scheduled_at
        params = [
            job.id.hex.encode(), job.queue_name.encode(), job.job_type.encode(), payload.encode(),
            b"%d" % job.priority, b"%d" % job.max_retries, b"%d" % job.retry_count,
            at.astimezone(UTC).isoformat().encode() if at else None,
            b"scheduled" if at else b"pending",
            job.created_by.hex.encode() if job.created_by else None, metadata.encode(),
        ]
        conn.ensure_connection()
        with conn.wrap_database_errors:
            created = _insert_prepared(conn.connection, params, self.prepared_statements)
        return self._stored(job, payload, metadata, created)

    def _copy_in(self, conn: Any, jobs: list[Job], encoded: list[tuple[str, str]]) -> list[Job]:
        """Many jobs in one binary COPY; the caller holds a transaction (or savepoint) open."""
        import psycopg

        stored_job = self._stored
        conn.ensure_connection()
        with conn.wrap_database_errors, psycopg.Cursor(conn.connection) as cursor:
            # COPY has no now(): created_at (and run_at, when due at once) is the value now()
            # keeps for the rest of this transaction, as an INSERT would have stored.
            now = cursor.execute("SELECT now()", binary=True).fetchone()[0]
            created = now.astimezone(UTC)
            cursor.adapters.register_dumper(None, _jsonb_text_dumper())
            with cursor.copy(COPY_IN) as copy:
                copy.set_types(COPY_TYPES)
                write = copy.write_row
                for job, (payload, metadata) in zip(jobs, encoded, strict=True):
                    at = job.scheduled_at
                    write((job.id, job.queue_name, job.job_type, payload, job.priority,
                           job.max_retries, job.retry_count, at, "scheduled" if at else "pending",
                           job.created_by, now, metadata, at or now, 0))
        return [stored_job(job, payload, metadata, created)
                for job, (payload, metadata) in zip(jobs, encoded, strict=True)]

    def _insert_sqlite(self, jobs: list[Job], encoded: list[tuple[str, str]]) -> list[Job]:
        now = datetime.now(UTC)
        stamp = self._param_time(now)
        row = "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0)"
        with self._writing() as cursor:
            for start in range(0, len(jobs), INSERT_CHUNK):
                chunk = list(zip(jobs[start:start + INSERT_CHUNK],
                                 encoded[start:start + INSERT_CHUNK], strict=True))
                params: list[Any] = []
                for job, (payload, metadata) in chunk:
                    scheduled = self._param_time(job.scheduled_at)
                    params += [job.id.hex, job.queue_name, job.job_type, payload, job.priority,
                               job.max_retries, job.retry_count, scheduled,
                               "scheduled" if job.scheduled_at else "pending",
                               self._param_uuid(job.created_by), stamp, metadata, scheduled or stamp]
                cursor.execute(
                    f"INSERT INTO portico_job ({INSERT_COLUMNS}) "
                    f"VALUES {', '.join([row] * len(chunk))}",
                    params,
                )
        return [self._stored(job, payload, metadata, now)
                for job, (payload, metadata) in zip(jobs, encoded, strict=True)]

    def _existing_ids(self, ids: list[UUID]) -> list[UUID]:
        from jobs.models import JobRecord

        return list(JobRecord.objects.using(self.using).filter(id__in=ids).values_list("id", flat=True))

    # -- claim ---------------------------------------------------------------------------

    async def dequeue(self, queue_name: str | Sequence[str], timeout: float = 30) -> Job | None:
        names = queue_names(queue_name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        if timeout > 0 and self.is_postgres:
            self._ensure_listener()
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            with self._waiters_lock:
                self._waiters[waiter] = loop
            try:
                claimed = await self._claim(names, 1)
                if claimed:
                    return claimed[0]
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                # Woken by NOTIFY (or a local enqueue); the poll covers scheduled jobs
                # falling due and a lost notification.
                await asyncio.wait({waiter}, timeout=min(remaining, self.poll_interval))
            finally:
                with self._waiters_lock:
                    self._waiters.pop(waiter, None)

    async def dequeue_many(self, queue_name: str | Sequence[str], limit: int) -> list[Job]:
        return await self._claim(queue_names(queue_name), limit)

    async def _claim(self, names: tuple[str, ...], limit: int) -> list[Job]:
        """Claim on the loop's own connection (PostgreSQL) or on a worker thread; if
        cancelled meanwhile, give back what was claimed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Job]]
        if limit > 0 and self._hot_on_loop():
            future = asyncio.ensure_future(self._claim_on_loop(loop, names, limit))
        else:
            future = loop.run_in_executor(
                self._pool(), lambda: self._run_sync(self.dequeue_many_sync, names, limit)
            )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            def give_back(done: asyncio.Future[list[Job]]) -> None:
                if not done.cancelled() and done.exception() is None and done.result():
                    self._pool().submit(self._run_sync, self._release_all_sync, done.result())

            future.add_done_callback(give_back)
            raise

    async def _claim_on_loop(self, loop: asyncio.AbstractEventLoop, names: tuple[str, ...],
                             limit: int) -> list[Job]:
        rows = await self._loop_connections(loop).run("claim", *self._claim_statement(names, limit))
        return self._claimed(rows)

    def _release_all_sync(self, jobs: list[Job]) -> None:
        for job in jobs:
            with contextlib.suppress(InvalidJobStateError):
                self.release_sync(job.id, claim=job)

    def dequeue_sync(self, queue_name: str | Sequence[str], timeout: float = 0) -> Job | None:
        """Claim the next due job, polling up to ``timeout`` seconds (for synchronous callers)."""
        names = queue_names(queue_name)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            claimed = self.dequeue_many_sync(names, 1)
            if claimed:
                return claimed[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(remaining, self.poll_interval))

    def dequeue_many_sync(self, queue_name: str | Sequence[str], limit: int) -> list[Job]:
        """Claim up to ``limit`` due jobs in one statement, best first."""
        names = queue_names(queue_name)
        if limit <= 0:
            return []
        if self.is_postgres:
            rows = self._claim_postgres(names, limit)
        else:
            rows = self._claim_sqlite(names, limit)
        return self._claimed(rows)

    def _claim_postgres(self, names: tuple[str, ...], limit: int) -> list[tuple]:
        return self._hot(*self._claim_statement(names, limit))

    def _claim_statement(self, names: tuple[str, ...], limit: int) -> tuple[str, list[Any]]:
        if len(names) == 1:
            return CLAIM_ONE, [names[0], limit, self.lease_seconds]
        return CLAIM_ACROSS, [list(names), limit, limit, self.lease_seconds]

    def _claimed(self, rows: list[tuple]) -> list[Job]:
        """Claimed rows as jobs, best first."""
        return [self._job(row) for row in sorted(rows, key=lambda r: (-r[5], r[0]))]

    def _hot(self, sql: str, params: list[Any]) -> list[tuple]:
        """Run a hot-path statement on PostgreSQL: prepared, binary results, no SQL rebuilt.

        Django's cursor binds parameters client side and parses every timestamp from text;
        on the claim and acknowledge paths that was most of the worker's CPU per job.
        """
        import psycopg

        self.connection.ensure_connection()
        raw = self.connection.connection
        if self.prepared_statements and raw.prepare_threshold is None:
            raw.prepare_threshold = ONLY_WHEN_ASKED  # Django opens its connections with None
        with self.connection.wrap_database_errors, psycopg.Cursor(raw) as cursor:
            cursor.adapters.register_loader("jsonb", _jsonb_loader())
            cursor.execute(sql, params, prepare=self.prepared_statements, binary=True)
            return cursor.fetchall()

    def _claim_sqlite(self, names: tuple[str, ...], limit: int) -> list[tuple]:
        now = datetime.now(UTC)
        marks = ", ".join(["%s"] * len(names))
        with self._writing() as cursor:
            cursor.execute(
                "UPDATE portico_job SET status = 'running', started_at = %s, attempt = attempt + 1, "
                "lease_expires_at = %s WHERE seq IN (SELECT seq FROM portico_job "
                f"WHERE queue_name IN ({marks}) AND status IN {WAITING_SQL} AND run_at <= %s "
                f"ORDER BY priority DESC, seq LIMIT %s) RETURNING {COLUMNS}",
                [self._param_time(now), self._param_time(now + timedelta(seconds=self.lease_seconds)),
                 *names, self._param_time(now), limit],
            )
            return cursor.fetchall()

    # -- acknowledge ---------------------------------------------------------------------

    async def acknowledge(
        self, job_id: UUID, result_data: dict[str, Any] | None = None, *, claim: Job | None = None
    ) -> Job:
        """Complete the job; acknowledgements arriving together share one statement.

        Each caller still gets its own completed job, or its own error, as if alone.
        """
        # Checked here: a bad result is its caller's error, not the batch's. Most are empty.
        text = "{}" if result_data is None or result_data == {} else check_json(result_data, "result_data")
        return await self._ack_batcher().submit(job_id, claim, text)

    def _ack_batcher(self) -> _AckBatcher:
        loop = asyncio.get_running_loop()
        batcher = self._last_batcher  # the usual case, one loop: no lock, no weak dict
        if batcher is not None and batcher.loop is loop:
            return batcher
        with self._batchers_lock:
            batcher = self._batchers.get(loop)
            if batcher is None:
                batcher = self._batchers[loop] = _AckBatcher(self, loop, self.ack_window)
        self._last_batcher = batcher
        return batcher

    def acknowledge_sync(
        self, job_id: UUID, result_data: dict[str, Any] | None = None, *, claim: Job | None = None
    ) -> Job:
        done = self._acknowledge([(job_id, claim, result_data)])
        if done:
            return done[0]
        raise self._ack_refusal(job_id, claim)

    def _ack_refusal(self, job_id: UUID, claim: Job | None) -> PorticoError:
        """Why an acknowledgement changed nothing: the precise error for its caller."""
        job = self.get_job_sync(job_id)
        if job is None:
            return JobNotFoundError(f"no job has id {job_id}")
        try:
            lifecycle.check_claim(job, claim, "acknowledge")
            lifecycle.check_running(job, "acknowledge")
        except InvalidJobStateError as exc:
            return exc
        return InvalidJobStateError(f"cannot acknowledge job {job_id}")  # a race: it just changed

    def _acknowledge_each_sync(self, items: list[tuple[UUID, Job | None, str]]) -> list[Job | PorticoError]:
        """One statement for many (job id, claim, result JSON); per item, the job or its error."""
        done = {job.id: job for job in self._acknowledge(
            [(job_id, claim, None) for job_id, claim, _ in items], [text for *_, text in items])}
        return [done.get(job_id) or self._ack_refusal(job_id, claim) for job_id, claim, _ in items]

    async def _acknowledge_each_on_loop(self, loop: asyncio.AbstractEventLoop,
                                        items: list[tuple[UUID, Job, str]]) -> list[Job | PorticoError]:
        """_acknowledge_each_sync for claimed jobs, on the loop's own connection (PostgreSQL)."""
        rows = await self._loop_connections(loop).run(
            "acknowledge", ACKNOWLEDGE, _acknowledge_params(items, [text for *_, text in items]),
            # Safe to send again: it changes only jobs still running under these claims.
            again_if_broken=True)
        time = self._time
        completed = {job_id: time(at) for job_id, at in rows}
        done: list[Job | PorticoError | None] = [
            _completed(claim, completed[job_id]) if job_id in completed else None
            for job_id, claim, _ in items]
        refused = [(index, job_id, claim) for index, (job_id, claim, _) in enumerate(items)
                   if job_id not in completed]
        if refused:  # rare: say why, as _acknowledge_each_sync does
            errors = await self._call(lambda: [self._ack_refusal(job_id, claim) for _, job_id, claim in refused])
            for (index, _, _), error in zip(refused, errors, strict=True):
                done[index] = error
        return done  # type: ignore[return-value]

    def _hot_on_loop(self) -> bool:
        """Whether claims and acknowledgements from an event loop run on its own connections.

        PostgreSQL only; asked once, because Django's connection for the loop's thread is
        a new object in each new context (each task, each callback) that asks for it.
        """
        if self._on_loop is None:
            self._on_loop = self.is_postgres
        return self._on_loop

    def _loop_connections(self, loop: asyncio.AbstractEventLoop) -> _LoopConnections:
        with self._batchers_lock:
            own = self._loop_conns.get(loop)
            if own is None:
                own = self._loop_conns[loop] = _LoopConnections(self)
            return own

    async def acknowledge_many(
        self, claims: Sequence[Job], results: Sequence[dict[str, Any] | None] | None = None
    ) -> list[Job]:
        return await self._call(self.acknowledge_many_sync, claims, results)

    def acknowledge_many_sync(
        self, claims: Sequence[Job], results: Sequence[dict[str, Any] | None] | None = None
    ) -> list[Job]:
        """Complete many claimed jobs in one statement; returns those whose claim still held."""
        results = results if results is not None else [None] * len(claims)
        return self._acknowledge([(c.id, c, r) for c, r in zip(claims, results, strict=True)])

    def _acknowledge(self, items: list[tuple[UUID, Job | None, dict[str, Any] | None]],
                     texts: list[str] | None = None) -> list[Job]:
        if not items:
            return []
        if texts is None:
            texts = [check_json(result or {}, "result_data") for _, _, result in items]
        if self.is_postgres:
            rows = self._hot(ACKNOWLEDGE, _acknowledge_params(items, texts))
        else:
            now = self._param_time(datetime.now(UTC))
            rows = []
            with self._writing() as cursor:
                for (job_id, claim, _), text in zip(items, texts, strict=True):
                    cursor.execute(
                        "UPDATE portico_job SET status = 'completed', completed_at = %s, "
                        "result_data = %s, lease_expires_at = NULL WHERE id = %s AND status = 'running' "
                        "AND (%s IS NULL OR started_at = %s) RETURNING id, completed_at",
                        [now, text, job_id.hex, *[self._param_time(claim.started_at) if claim else None] * 2],
                    )
                    rows += cursor.fetchall()
        completed = {(i if isinstance(i, UUID) else UUID(i)): self._time(at) for i, at in rows}
        claims = {job_id: claim for job_id, claim, _ in items if claim is not None}
        unclaimed = [job_id for job_id in completed if job_id not in claims]
        fetched = {job.id: job for job in self._list(
            "id IN (" + ", ".join(["%s"] * len(unclaimed)) + ")",
            [self._param_uuid(i) for i in unclaimed], None)} if unclaimed else {}
        return [
            _completed(claims[job_id], at) if job_id in claims else fetched[job_id]
            for job_id, at in completed.items()
        ]

    # -- transitions decided by the lifecycle rules ----------------------------------------

    def _locked_jobs(self, cursor, where: str, params: list[Any], limit: int | None = None,
                     skip_locked: bool = False) -> list[tuple[int, int, Job]]:
        """Rows matching where, locked for this transaction: (seq, attempt, job)."""
        lock = ""
        if self.is_postgres:
            lock = " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"
        cursor.execute(
            f"SELECT {COLUMNS}, attempt FROM portico_job WHERE {where} ORDER BY seq"
            + (f" LIMIT {int(limit)}" if limit else "") + lock,
            params,
        )
        return [(row[0], row[-1], self._job(row[:-1])) for row in cursor.fetchall()]

    def _apply(self, cursor, now: datetime,
               changes: list[tuple[int, int, Job, Job, str | None]]) -> None:
        """Write each (seq, attempt, old, new, attempt outcome) and record ended attempts."""
        if not changes:
            return
        rows = []
        attempts = []
        for seq, attempt, old, new, outcome in changes:
            due = new.scheduled_at if new.scheduled_at and new.scheduled_at > now else now
            rows.append([seq, new.status.value, new.retry_count, new.scheduled_at, new.started_at,
                         new.completed_at, new.failed_at, new.error_message, due])
            if outcome is not None and old.started_at is not None:
                attempts.append([seq, attempt, old.started_at, now, outcome, new.error_message])
        if self.is_postgres:
            for start in range(0, len(rows), TRANSITION_CHUNK):
                chunk = rows[start:start + TRANSITION_CHUNK]
                values = ", ".join(
                    ["(%s::bigint, %s, %s::int, %s::timestamptz, %s::timestamptz, %s::timestamptz, "
                     "%s::timestamptz, %s::text, %s::timestamptz)"] * len(chunk))
                cursor.execute(
                    "UPDATE portico_job j SET status = v.status, retry_count = v.retry_count, "
                    "scheduled_at = v.scheduled_at, started_at = v.started_at, "
                    "completed_at = v.completed_at, failed_at = v.failed_at, "
                    "error_message = v.error_message, run_at = v.run_at, lease_expires_at = NULL "
                    f"FROM (VALUES {values}) AS v(seq, status, retry_count, scheduled_at, started_at, "
                    "completed_at, failed_at, error_message, run_at) WHERE j.seq = v.seq",
                    [value for row in chunk for value in row],
                )
            if attempts:
                cursor.execute(
                    "INSERT INTO portico_job_attempt (job_seq, attempt, started_at, finished_at, "
                    "outcome, error_message) VALUES "
                    + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(attempts)),
                    [value for row in attempts for value in row],
                )
        else:
            for seq, status, retry_count, *times, error, due in rows:
                cursor.execute(
                    "UPDATE portico_job SET status = %s, retry_count = %s, scheduled_at = %s, "
                    "started_at = %s, completed_at = %s, failed_at = %s, error_message = %s, "
                    "run_at = %s, lease_expires_at = NULL WHERE seq = %s",
                    [status, retry_count, *[self._param_time(t) for t in times], error,
                     self._param_time(due), seq],
                )
            for seq, attempt, started, finished, outcome, error in attempts:
                cursor.execute(
                    "INSERT INTO portico_job_attempt (job_seq, attempt, started_at, finished_at, "
                    "outcome, error_message) VALUES (%s, %s, %s, %s, %s, %s)",
                    [seq, attempt, self._param_time(started), self._param_time(finished), outcome, error],
                )

    def _one_locked(self, cursor, job_id: UUID) -> tuple[int, int, Job]:
        found = self._locked_jobs(cursor, "id = %s", [self._param_uuid(job_id)])
        if not found:
            raise JobNotFoundError(f"no job has id {job_id}")
        return found[0]

    async def reject(
        self,
        job_id: UUID,
        requeue: bool = True,
        error_message: str | None = None,
        *,
        delay: float | None = None,
        claim: Job | None = None,
    ) -> Job:
        return await self._call(self.reject_sync, job_id, requeue, error_message, delay=delay, claim=claim)

    def reject_sync(
        self,
        job_id: UUID,
        requeue: bool = True,
        error_message: str | None = None,
        *,
        delay: float | None = None,
        claim: Job | None = None,
    ) -> Job:
        error = clean_text(error_message)
        with self._writing() as cursor:
            seq, attempt, job = self._one_locked(cursor, job_id)
            lifecycle.check_claim(job, claim, "reject")
            lifecycle.check_rejectable(job)
            now = self._now(cursor)
            new = lifecycle.rejected(job, requeue, error, now, delay)
            outcome = new.status.value if job.status is JobStatus.RUNNING else None
            self._apply(cursor, now, [(seq, attempt, job, new, outcome)])
        if new.status is JobStatus.RETRYING:
            transaction.on_commit(self._wake_waiters, using=self.using)
        return new

    async def reject_many(
        self, claims: Sequence[Job], errors: Sequence[str | None], requeue: bool = True,
        delays: Sequence[float | None] | None = None,
    ) -> list[Job]:
        return await self._call(self.reject_many_sync, claims, errors, requeue, delays)

    def reject_many_sync(
        self, claims: Sequence[Job], errors: Sequence[str | None], requeue: bool = True,
        delays: Sequence[float | None] | None = None,
    ) -> list[Job]:
        """Record many failures in one transaction; returns those whose claim still held."""
        if not claims:
            return []
        delays = delays if delays is not None else [None] * len(claims)
        wanted = {c.id: (c, clean_text(e), d) for c, e, d in zip(claims, errors, delays, strict=True)}
        with self._writing() as cursor:
            marks = ", ".join(["%s"] * len(wanted))
            locked = self._locked_jobs(cursor, f"id IN ({marks})",
                                       [self._param_uuid(i) for i in wanted])
            now = self._now(cursor)
            changes = []
            for seq, attempt, job in locked:
                claim, error, delay = wanted[job.id]
                if lifecycle.stale_claim(job, claim):
                    continue
                new = lifecycle.rejected(job, requeue, error, now, delay)
                changes.append((seq, attempt, job, new, new.status.value))
            self._apply(cursor, now, changes)
        return [new for *_, new, _ in changes]

    async def release(self, job_id: UUID, *, claim: Job | None = None) -> Job:
        return await self._call(self.release_sync, job_id, claim=claim)

    def release_sync(self, job_id: UUID, *, claim: Job | None = None) -> Job:
        with self._writing() as cursor:
            seq, attempt, job = self._one_locked(cursor, job_id)
            lifecycle.check_claim(job, claim, "release")
            lifecycle.check_running(job, "release")
            new = lifecycle.released(job)
            self._apply(cursor, self._now(cursor), [(seq, attempt, job, new, "released")])
        transaction.on_commit(self._wake_waiters, using=self.using)
        return new

    async def cancel_job(self, job_id: UUID) -> bool:
        return await self._call(self.cancel_job_sync, job_id)

    def cancel_job_sync(self, job_id: UUID) -> bool:
        with self._writing() as cursor:
            found = self._locked_jobs(cursor, "id = %s", [self._param_uuid(job_id)])
            if not found or found[0][2].status not in WAITING_STATUSES:
                return False
            seq, attempt, job = found[0]
            now = self._now(cursor)
            self._apply(cursor, now, [(seq, attempt, job, lifecycle.cancelled(job, now), None)])
            return True

    async def requeue_job(self, job_id: UUID) -> Job:
        return await self._call(self.requeue_job_sync, job_id)

    def requeue_job_sync(self, job_id: UUID) -> Job:
        with self._writing() as cursor:
            seq, attempt, job = self._one_locked(cursor, job_id)
            new = lifecycle.requeued(job)
            self._apply(cursor, self._now(cursor), [(seq, attempt, job, new, None)])
        transaction.on_commit(self._wake_waiters, using=self.using)
        self._dispatch_on_commit([new.queue_name])
        return new

    async def heartbeat(self, claims: Sequence[Job]) -> list[UUID]:
        return await self._call(self.heartbeat_sync, claims)

    def heartbeat_sync(self, claims: Sequence[Job]) -> list[UUID]:
        if not claims:
            return []
        if self.is_postgres:
            values = ", ".join(["(%s::uuid, %s::timestamptz)"] * len(claims))
            with self.connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE portico_job j SET lease_expires_at = now() + %s * interval '1 second' "
                    f"FROM (VALUES {values}) AS v(id, started_at) WHERE j.id = v.id "
                    "AND j.status = 'running' AND j.started_at = v.started_at RETURNING j.id",
                    [self.lease_seconds, *[v for c in claims for v in (c.id, c.started_at)]],
                )
                return [row[0] for row in cursor.fetchall()]
        until = self._param_time(datetime.now(UTC) + timedelta(seconds=self.lease_seconds))
        held = []
        with self._writing() as cursor:
            for claim in claims:
                cursor.execute(
                    "UPDATE portico_job SET lease_expires_at = %s WHERE id = %s "
                    "AND status = 'running' AND started_at = %s RETURNING id",
                    [until, claim.id.hex, self._param_time(claim.started_at)],
                )
                held += [claim.id for _ in cursor.fetchall()]
        return held

    async def rescue(self) -> list[UUID]:
        return await self._call(self.rescue_sync)

    def rescue_sync(self, batch: int = 1000) -> list[UUID]:
        """Retry (or dead-letter) every running job whose lease ran out: its worker is gone."""
        rescued: list[UUID] = []
        while True:
            with self._writing() as cursor:
                now = self._now(cursor)
                expired = self._locked_jobs(
                    cursor, "status = 'running' AND lease_expires_at <= %s",
                    [self._param_time(now)], limit=batch, skip_locked=True,
                )
                changes = []
                for seq, attempt, job in expired:
                    new = lifecycle.rejected(job, True, lifecycle.WORKER_LOST, now)
                    changes.append((seq, attempt, job, new, new.status.value))
                self._apply(cursor, now, changes)
            rescued += [job.id for _, _, job in expired]
            if len(expired) < batch:
                break
        if rescued:
            log.warning("rescued %d job(s) whose lease ran out", len(rescued))
            transaction.on_commit(self._wake_waiters, using=self.using)
        return rescued

    def prune_sync(self, older_than: timedelta | None = None, batch: int = 5000) -> int:
        """Delete completed jobs finished before ``older_than`` ago, a batch per transaction.

        Counts of completed jobs go down; lifetime totals stay as they were.
        """
        if older_than is None:
            older_than = timedelta(seconds=float(setting("PORTICO_RETENTION")))
        deleted = 0
        while True:
            with self._writing() as cursor:
                cutoff = self._now(cursor) - older_than
                cursor.execute(
                    "SELECT seq FROM portico_job WHERE status = 'completed' AND completed_at < %s "
                    "ORDER BY completed_at LIMIT %s" + (" FOR UPDATE SKIP LOCKED" if self.is_postgres else ""),
                    [self._param_time(cutoff), batch],
                )
                seqs = [row[0] for row in cursor.fetchall()]
                if seqs:
                    marks = ", ".join(["%s"] * len(seqs))
                    cursor.execute(f"DELETE FROM portico_job_attempt WHERE job_seq IN ({marks})", seqs)
                    cursor.execute(f"DELETE FROM portico_job WHERE seq IN ({marks})", seqs)
            deleted += len(seqs)
            if len(seqs) < batch:
                self.forget_dead_workers_sync()
                return deleted

    async def prune(self, older_than: timedelta | None = None) -> int:
        return await self._call(self.prune_sync, older_than)

    # -- reading -------------------------------------------------------------------------

    async def get_job(self, job_id: UUID) -> Job | None:
        return await self._call(self.get_job_sync, job_id)

    def get_job_sync(self, job_id: UUID) -> Job | None:
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT {COLUMNS} FROM portico_job WHERE id = %s", [self._param_uuid(job_id)])
            row = cursor.fetchone()
        return self._job(row) if row else None

    async def get_result(self, job_id: UUID) -> dict[str, Any] | None:
        return await self._call(self.get_result_sync, job_id)

    def get_result_sync(self, job_id: UUID) -> dict[str, Any] | None:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT result_data FROM portico_job WHERE id = %s AND status = 'completed'",
                           [self._param_uuid(job_id)])
            row = cursor.fetchone()
        if row is None or row[0] is None:
            return None
        return json.loads(row[0]) if isinstance(row[0], str | bytes) else row[0]

    async def get_job_attempts(self, job_id: UUID) -> list[JobAttempt]:
        return await self._call(self.get_job_attempts_sync, job_id)

    def get_job_attempts_sync(self, job_id: UUID) -> list[JobAttempt]:
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT seq, attempt, status, started_at, completed_at, result_data "
                "FROM portico_job WHERE id = %s", [self._param_uuid(job_id)])
            row = cursor.fetchone()
            if row is None:
                return []
            seq, attempt, status, started_at, completed_at, result = row
            cursor.execute(
                "SELECT attempt, started_at, finished_at, outcome, error_message "
                "FROM portico_job_attempt WHERE job_seq = %s ORDER BY attempt, id", [seq])
            attempts = [
                JobAttempt(job_id=job_id, attempt=n, started_at=self._time(s),
                           finished_at=self._time(f), outcome=o, error_message=e)
                for n, s, f, o, e in cursor.fetchall()
            ]
        # The run in progress, or the one that completed, is the job row itself.
        if status == JobStatus.RUNNING.value:
            attempts.append(JobAttempt(job_id=job_id, attempt=attempt, started_at=self._time(started_at)))
        elif status == JobStatus.COMPLETED.value and started_at is not None:
            data = json.loads(result) if isinstance(result, str | bytes) else (result or {})
            attempts.append(JobAttempt(job_id=job_id, attempt=attempt, started_at=self._time(started_at),
                                       finished_at=self._time(completed_at), outcome="completed",
                                       result_data=data))
        return attempts

    def _list(self, where: str, params: list[Any], limit: int | None) -> list[Job]:
        sql = f"SELECT {COLUMNS} FROM portico_job WHERE {where} ORDER BY seq"
        if limit is not None:
            sql += " LIMIT %s"
            params = [*params, int(limit)]
        return self._select_jobs(sql, params)

    def _select_jobs(self, sql: str, params: list[Any]) -> list[Job]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return [self._job(row) for row in cursor.fetchall()]

    async def list_jobs_by_status(self, status: JobStatus, limit: int | None = None) -> list[Job]:
        return await self._call(self.list_jobs_by_status_sync, status, limit)

    def list_jobs_by_status_sync(self, status: JobStatus, limit: int | None = None) -> list[Job]:
        value = JobStatus(status).value
        if self.is_postgres and value in BUSY_STATUSES and value != "running":
            return self._list_busy(value, limit)
        # The other statuses through portico_job_status; running jobs (few: the workers'
        # concurrency bounds them) through portico_job_lease, which holds exactly them.
        return self._list("status = %s", [value], limit)

    def _list_busy(self, status: str, limit: int | None) -> list[Job]:
        """Pending or completed jobs across queues, oldest first (PostgreSQL).

        portico_job_status leaves these out (see jobs.models), so each known queue's
        (queue, status, seq) index is walked for at most ``limit`` rows and the walks are
        merged: O(queues x limit) at any table size.
        """
        bound = "" if limit is None else " LIMIT %s"
        sql = (f"SELECT {J_COLUMNS} "
               "FROM (SELECT DISTINCT queue_name FROM portico_queue_counter) q CROSS JOIN LATERAL ("
               f"SELECT {COLUMNS} FROM portico_job WHERE queue_name = q.queue_name AND status = %s "
               f"ORDER BY seq{bound}) j ORDER BY j.seq{bound}")
        return self._select_jobs(sql, [status] if limit is None else [status, int(limit), int(limit)])

    async def list_jobs_by_type(self, job_type: str, limit: int | None = None) -> list[Job]:
        return await self._call(self.list_jobs_by_type_sync, job_type, limit)

    def list_jobs_by_type_sync(self, job_type: str, limit: int | None = None) -> list[Job]:
        if not self.is_postgres:
            return self._list("job_type = %s", [job_type], limit)
        # portico_job_type leaves running jobs out (jobs.models); they come from the lease
        # index, which holds only them.
        bound = "" if limit is None else " LIMIT %s"
        sql = (f"SELECT {COLUMNS} FROM ((SELECT {COLUMNS} FROM portico_job WHERE job_type = %s "
               f"AND status <> 'running' ORDER BY seq{bound}) UNION ALL (SELECT {COLUMNS} "
               f"FROM portico_job WHERE job_type = %s AND status = 'running')) j ORDER BY seq{bound}")
        extra = [] if limit is None else [int(limit)]
        return self._select_jobs(sql, [job_type, *extra, job_type, *extra])

    # -- statistics ----------------------------------------------------------------------

    async def get_queue_stats(self, queue_name: str) -> QueueStats:
        return await self._call(self.get_queue_stats_sync, queue_name)

    def get_queue_stats_sync(self, queue_name: str) -> QueueStats:
        return self._stats([queue_name])[0]

    async def get_all_queue_stats(self) -> list[QueueStats]:
        return await self._call(self.get_all_queue_stats_sync)

    def get_all_queue_stats_sync(self) -> list[QueueStats]:
        return self._stats(None)

    def _stats(self, only: list[str] | None) -> list[QueueStats]:
        """Counts from the counter table and latency from the due index: never a table count."""
        counters = self.counters_sync(only)
        names = only or sorted(counters)
        latency = self.oldest_due_ages_sync(names)
        return [self._queue_stats(name, counters.get(name, {}), latency.get(name, 0.0)) for name in names]

    def counters_sync(self, only: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
        """queue -> {counter name: value}: every maintained count, total and histogram count.

        One statement, so one snapshot: a scrape never sees a job's claim counted in one
        family and not yet in another. Names: the seven statuses, ``<event>_total``, and the
        histogram buckets written by migration 0006 (``duration:<i>``, ``wait:sum_us``, ...).
        """
        where, params = ("WHERE queue_name IN (" + ", ".join(["%s"] * len(only)) + ")", list(only)) \
            if only else ("", [])
        # One row per queue, its counters as a JSON object: a hundred queues' six thousand
        # counters cross the wire and become dicts in C, not row by row in Python.
        aggregate = "json_object_agg" if self.is_postgres else "json_group_object"
        with self.connection.cursor() as cursor:
            cursor.execute(
                f"SELECT queue_name, {aggregate}(name, total) FROM (SELECT queue_name, name, SUM(value) AS total "
                f"FROM portico_queue_counter {where} GROUP BY queue_name, name) AS t GROUP BY queue_name", params)
            return {queue: json.loads(values) if isinstance(values, str) else values
                    for queue, values in cursor.fetchall()}

    def oldest_due_ages_sync(self, names: Sequence[str]) -> dict[str, float]:
        """queue -> seconds since its oldest due waiting job became due (queues with none left out).

        One probe of the due index per queue, whatever the table holds.
        """
        with self.connection.cursor() as cursor:
            return self._latency(cursor, list(names))

    def _latency(self, cursor, names: list[str]) -> dict[str, float]:
        if not names:
            return {}
        if self.is_postgres:
            cursor.execute(
                "SELECT q.name, EXTRACT(EPOCH FROM now() - o.run_at) FROM unnest(%s::text[]) AS q(name) "
                "CROSS JOIN LATERAL (SELECT run_at FROM portico_job WHERE queue_name = q.name "
                f"AND status IN {WAITING_SQL} AND run_at <= now() ORDER BY run_at LIMIT 1) o",
                [names],
            )
            return {name: max(0.0, float(age)) for name, age in cursor.fetchall()}
        now = datetime.now(UTC)
        ages = {}
        for name in names:
            cursor.execute(
                "SELECT MIN(run_at) FROM portico_job WHERE queue_name = %s "
                f"AND status IN {WAITING_SQL} AND run_at <= %s", [name, self._param_time(now)])
            oldest = cursor.fetchone()[0]
            if oldest is not None:
                ages[name] = max(0.0, (now - self._time(oldest)).total_seconds())
        return ages

    @staticmethod
    def _queue_stats(name: str, c: dict[str, int], latency: float) -> QueueStats:
        return QueueStats(
            queue_name=name,
            pending_count=c.get("pending", 0),
            running_count=c.get("running", 0),
            completed_count=c.get("completed", 0),
            failed_count=c.get("failed", 0),
            dead_letter_count=c.get("dead_letter", 0),
            scheduled_count=c.get("scheduled", 0),
            retrying_count=c.get("retrying", 0),
            latency_seconds=latency,
            enqueued_total=c.get("enqueued_total", 0),
            completed_total=c.get("completed_total", 0),
            failed_total=c.get("failed_total", 0),
            dead_lettered_total=c.get("dead_lettered_total", 0),
            retried_total=c.get("retried_total", 0),
        )

    def compact_counters_sync(self) -> None:
        """Fold the counters' delta rows into one row per (queue, name)."""
        if self.connection.in_atomic_block:
            return  # inside someone's transaction: not the moment to rewrite shared rows
        if self.is_postgres:
            with self._writing() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(hashtext('portico_queue_counter'))")
                if not cursor.fetchone()[0]:
                    return
                # Only the (queue, name) pairs that gained delta rows are rewritten: the
                # folded rows of quiet queues and unused histogram buckets stay untouched.
                cursor.execute(
                    "WITH multi AS (SELECT queue_name, name FROM portico_queue_counter "
                    "               GROUP BY queue_name, name HAVING COUNT(*) > 1), "
                    "gone AS (DELETE FROM portico_queue_counter c USING multi m "
                    "         WHERE c.queue_name = m.queue_name AND c.name = m.name "
                    "         RETURNING c.queue_name, c.name, c.value) "
                    "INSERT INTO portico_queue_counter (queue_name, name, value) "
                    "SELECT queue_name, name, SUM(value) FROM gone GROUP BY queue_name, name"
                )
            return
        with self._writing() as cursor:
            cursor.execute("SELECT MAX(id), COUNT(*) FROM portico_queue_counter")
            top, rows = cursor.fetchone()
            if top is None or rows < 2:
                return
            cursor.execute(
                "SELECT queue_name, name, SUM(value) FROM portico_queue_counter WHERE id <= %s "
                "GROUP BY queue_name, name", [top])
            sums = cursor.fetchall()
            cursor.execute("DELETE FROM portico_queue_counter WHERE id <= %s", [top])
            for queue, name, value in sums:
                cursor.execute(
                    "INSERT INTO portico_queue_counter (queue_name, name, value) VALUES (%s, %s, %s)",
                    [queue, name, value])

    def counter_drift_sync(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(queue, status) -> (counted rows, maintained count), for every pair that differs."""
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT queue_name, status, COUNT(*) FROM portico_job GROUP BY queue_name, status")
            actual = {(q, s): int(n) for q, s, n in cursor.fetchall()}
            statuses = [s.value for s in JobStatus]
            cursor.execute(
                "SELECT queue_name, name, SUM(value) FROM portico_queue_counter WHERE name IN ("
                + ", ".join(["%s"] * len(statuses)) + ") GROUP BY queue_name, name", statuses)
            kept = {(q, s): int(n) for q, s, n in cursor.fetchall()}
        return {
            key: (actual.get(key, 0), kept.get(key, 0))
            for key in set(actual) | set(kept)
            if actual.get(key, 0) != kept.get(key, 0)
        }

    def fix_counter_drift_sync(self) -> dict[tuple[str, str], tuple[int, int]]:
        """Recount under a lock that pauses writers, and append the corrections."""
        with self._writing() as cursor:
            if self.is_postgres:
                cursor.execute("LOCK TABLE portico_job IN SHARE MODE")
            drift = self.counter_drift_sync()
            for (queue, status), (actual, kept) in drift.items():
                cursor.execute(
                    "INSERT INTO portico_queue_counter (queue_name, name, value) VALUES (%s, %s, %s)",
                    [queue, status, actual - kept])
        return drift

    # -- workers -------------------------------------------------------------------------

    def worker_seen_sync(self, worker_id: str, kind: str, queues: Sequence[str],
                         hostname: str, pid: int) -> None:
        """Record that a worker process is alive and which queues it serves (its heartbeat)."""
        now = "now()" if self.is_postgres else "%s"
        stamp = [] if self.is_postgres else [self._param_time(datetime.now(UTC))]
        with self._writing() as cursor:
            cursor.execute(
                "INSERT INTO portico_worker (worker_id, kind, hostname, pid, queues, started_at, last_seen_at) "
                f"VALUES (%s, %s, %s, %s, %s, {now}, {now}) ON CONFLICT (worker_id) DO UPDATE "
                "SET last_seen_at = excluded.last_seen_at, queues = excluded.queues",
                [worker_id, kind, hostname[:255], pid, json.dumps(sorted(set(queues)))] + stamp * 2,
            )
            # A queue a worker serves is a known queue from then on, jobs or not: its series
            # and its dashboard row must not vanish when the worker stops.
            for name in sorted(set(queues)):
                cursor.execute(
                    "INSERT INTO portico_queue_counter (queue_name, name, value) SELECT %s, 'enqueued_total', 0 "
                    "WHERE NOT EXISTS (SELECT 1 FROM portico_queue_counter WHERE queue_name = %s)", [name, name])

    def worker_gone_sync(self, worker_id: str) -> None:
        """A worker that stops says so, rather than waiting a lease to be counted dead."""
        with self._writing() as cursor:
            cursor.execute("DELETE FROM portico_worker WHERE worker_id = %s", [worker_id])

    def live_workers_sync(self) -> dict[str, int]:
        """queue -> worker processes heard from within a lease that serve it."""
        with self.connection.cursor() as cursor:
            now = self._now(cursor)
            cursor.execute(
                "SELECT queues FROM portico_worker WHERE last_seen_at >= %s",
                [self._param_time(now - timedelta(seconds=self.lease_seconds))])
            rows = cursor.fetchall()
        live: dict[str, int] = {}
        for (queues,) in rows:
            for name in json.loads(queues) if isinstance(queues, str) else queues:
                live[name] = live.get(name, 0) + 1
        return live

    def forget_dead_workers_sync(self, older_than: timedelta = timedelta(days=1)) -> int:
        """Delete the rows of workers not heard from for ``older_than`` (killed, never said goodbye)."""
        with self._writing() as cursor:
            cutoff = self._now(cursor) - older_than
            cursor.execute("DELETE FROM portico_worker WHERE last_seen_at < %s", [self._param_time(cutoff)])
            return cursor.rowcount

    # -- waking --------------------------------------------------------------------------

    def _dispatch_on_commit(self, queues: Iterable[str]) -> None:
        """Once the transaction commits, tell PORTICO_DISPATCH which queues got due jobs.

        A rollback tells it nothing. ``robust``: the jobs are stored whatever the dispatcher
        does, so its failure is logged, never raised to the caller who enqueued.
        """
        path = setting("PORTICO_DISPATCH")
        names = sorted(set(queues)) if path else []
        if names:
            transaction.on_commit(lambda: import_string(path)(names), using=self.using, robust=True)

    def due_queue_names_sync(self) -> list[str]:
        """The queues holding at least one waiting job that is due now.

        Candidates come from the counters (queues with waiting jobs), each confirmed by one
        probe of the due index: nothing here counts or scans the job table.
        """
        now = "now()" if self.is_postgres else "%s"
        params = [] if self.is_postgres else [self._param_time(datetime.now(UTC))]
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.queue_name FROM (SELECT queue_name FROM portico_queue_counter "
                f"WHERE name IN {WAITING_SQL} GROUP BY queue_name HAVING SUM(value) > 0) c "
                "WHERE EXISTS (SELECT 1 FROM portico_job j WHERE j.queue_name = c.queue_name "
                f"AND j.status IN {WAITING_SQL} AND j.run_at <= {now}) ORDER BY c.queue_name",
                params,
            )
            return [row[0] for row in cursor.fetchall()]

    def _ensure_listener(self) -> None:
        if self._listener is None:
            with self._waiters_lock:
                if self._listener is None:
                    self._listener = _Listener(self.connection.get_connection_params(), self._wake_waiters)
                    self._listener.start()

    def _wake_waiters(self) -> None:
        with self._waiters_lock:
            waiters = list(self._waiters.items())
        for waiter, loop in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_wake, waiter)


_STATUSES = {status.value: status for status in JobStatus}


def _acknowledge_params(items: Sequence[tuple[UUID, Job | None, Any]], texts: list[str]) -> list[Any]:
    return [[job_id for job_id, _, _ in items],
            [claim.started_at if claim else None for _, claim, _ in items],
            texts]


def _completed(claim: Job, completed_at: datetime | None) -> Job:
    """The claimed job, completed: a copy with two fields set.

    dataclasses.replace re-runs __init__ and validation the claim already passed; on the
    acknowledge path of a batch worker that was a third of the Python time per job.
    """
    done = object.__new__(Job)
    done.__dict__.update(claim.__dict__, status=JobStatus.COMPLETED, completed_at=completed_at)
    return done


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _AckBatcher:
    """Gathers one event loop's concurrent acknowledgements into one statement at a time.

    The first acknowledgement waits ``window`` seconds for company; while a batch is being
    written, the next ones pile up and go together as soon as it is done. A job id appears
    at most once per statement, so two acknowledgements of the same job stay two attempts
    and the second is refused exactly as it would be alone.
    """

    def __init__(self, adapter: DatabaseJobQueueAdapter, loop: asyncio.AbstractEventLoop,
                 window: float) -> None:
        self.adapter = adapter
        self.loop = loop
        self.window = window
        self.pending: list[tuple[UUID, Job | None, str, asyncio.Future[Job]]] = []
        self.busy = False  # a flush is scheduled or being written
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, job_id: UUID, claim: Job | None, text: str) -> asyncio.Future[Job]:
        future: asyncio.Future[Job] = self.loop.create_future()
        self.pending.append((job_id, claim, text, future))
        if not self.busy:
            self.busy = True
            self._idle.clear()
            if self.window > 0:
                self.loop.call_later(self.window, self._flush)
            else:
                self.loop.call_soon(self._flush)
        return future

    async def drained(self) -> None:
        await self._idle.wait()

    def _flush(self) -> None:
        batch, later, seen = [], [], set()
        for item in self.pending:
            (later if item[0] in seen else batch).append(item)
            seen.add(item[0])
        self.pending = later
        if not batch:
            self.busy = False
            self._idle.set()
            return
        adapter = self.adapter
        items = [(job_id, claim, text) for job_id, claim, text, _ in batch]
        writing: asyncio.Future[list[Job | PorticoError]]
        if adapter._hot_on_loop() and all(claim is not None for _, claim, _ in items):
            writing = asyncio.ensure_future(adapter._acknowledge_each_on_loop(self.loop, items))
        else:
            writing = self.loop.run_in_executor(
                adapter._pool(), lambda: adapter._run_sync(adapter._acknowledge_each_sync, items))
        writing.add_done_callback(lambda done: self._settle(batch, done))

    def _settle(self, batch: list[tuple[UUID, Job | None, str, asyncio.Future[Job]]],
                done: asyncio.Future[list[Job | PorticoError]]) -> None:
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        outcomes = done.result() if error is None else [error] * len(batch)
        for (*_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled; the write stands regardless
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        self._flush()  # what piled up meanwhile goes at once


class _LoopConnections:
    """An event loop's own PostgreSQL connections for the hot path: one for claims, one for
    acknowledgements, so that a batch is claimed while the last one's outcomes are written.

    Run on a worker thread, each claim or acknowledgement cost two wake-ups across threads
    and a GIL contended with the loop: on the worker benchmark (bench/worker_e2e.py) about
    1.7 context switches per job instead of 0.2, and more CPU than the statements' own
    Python. Here they are awaited like any other I/O of the loop.

    Statements run as ``_hot`` runs them, with binary results. A connection that broke is
    replaced at the next statement; after a breakage seen anywhere in the process
    (``_breakages``), each is checked before its next statement, as the threads check theirs.
    """

    def __init__(self, adapter: DatabaseJobQueueAdapter) -> None:
        self.adapter = adapter
        self.connections: dict[str, Any] = {}  # role -> psycopg.AsyncConnection
        self.opening: dict[str, asyncio.Future[Any]] = {}
        self.seen: dict[str, int] = {}  # role -> _breakages count when last known good

    async def run(self, role: str, sql: str, params: list[Any], *,
                  again_if_broken: bool = False) -> list[tuple]:
        """The rows of one statement; errors as Django's database errors, as ``_hot`` raises them."""
        import psycopg

        tries = 2 if again_if_broken else 1
        for attempt in range(1, tries + 1):
            conn = await self._connection(role)
            try:
                async with conn.cursor() as cursor:
                    await cursor.execute(sql, params, prepare=self.adapter.prepared_statements, binary=True)
                    return await cursor.fetchall()
            except psycopg.Error as exc:
                broken = conn.broken or conn.closed
                if broken:
                    self._lost(role, conn)
                if not broken or attempt == tries:
                    raise _django_error(exc) from exc
        raise AssertionError("unreachable")

    async def _connection(self, role: str) -> Any:
        import psycopg

        using = self.adapter.using
        conn = self.connections.get(role)
        if conn is not None and self.seen.get(role) != _breakages.get(using, 0):
            self.seen[role] = _breakages.get(using, 0)
            try:
                await conn.execute("SELECT 1")
            except psycopg.Error:
                self._lost(role, conn)
        conn = self.connections.get(role)
        if conn is None:
            # Statements arriving together wait for the same new connection.
            opening = self.opening.get(role)
            if opening is None:
                opening = self.opening[role] = asyncio.ensure_future(self._open(role))
                opening.add_done_callback(lambda _: self.opening.pop(role, None))
            conn = await asyncio.shield(opening)
        return conn

    async def _open(self, role: str) -> Any:
        import psycopg

        params = self.adapter.connection.get_connection_params()
        params = {k: v for k, v in params.items() if k not in ("cursor_factory", "context")}
        try:
            conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
            conn.prepare_threshold = ONLY_WHEN_ASKED if self.adapter.prepared_statements else None
            conn.adapters.register_loader("jsonb", _jsonb_loader())
            try:
                if conn.info.parameter_status("TimeZone") != "UTC":
                    await conn.execute("SET TIME ZONE 'UTC'")  # as Django's own connections
            except BaseException:
                await conn.close()
                raise
        except psycopg.Error as exc:
            raise _django_error(exc) from exc
        self.connections[role] = conn
        self.seen[role] = _breakages.get(self.adapter.using, 0)
        return conn

    def _lost(self, role: str, conn: Any) -> None:
        """Drop a broken connection, and have the threads check theirs before their next use."""
        if self.connections.get(role) is conn:  # not already replaced by another statement
            del self.connections[role]
            using = self.adapter.using
            _breakages[using] = _breakages.get(using, 0) + 1
        with contextlib.suppress(Exception):
            conn.pgconn.finish()

    async def close(self) -> None:
        connections, self.connections = list(self.connections.values()), {}
        for conn in connections:
            with contextlib.suppress(Exception):
                await conn.close()

    def finish(self) -> None:
        """Close without the loop (it has stopped): libpq's own close, no round trip."""
        connections, self.connections = list(self.connections.values()), {}
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.pgconn.finish()

    def __del__(self) -> None:
        # A loop that ended without the adapter's close(): its connections go with it.
        self.finish()


def _django_error(exc: Exception) -> Exception:
    """A psycopg error as the Django database error of the same kind (as Django maps them)."""
    import psycopg
    from django.db import utils

    for name in ("DataError", "OperationalError", "IntegrityError", "InternalError",
                 "ProgrammingError", "NotSupportedError", "DatabaseError", "InterfaceError", "Error"):
        if isinstance(exc, getattr(psycopg, name)):
            return getattr(utils, name)(*exc.args)
    return exc


class _Listener(threading.Thread):
    """LISTENs on its own connection and wakes waiting dequeues when jobs become due."""

    def __init__(self, params: dict[str, Any], wake: Callable[[], None]) -> None:
        super().__init__(name="portico-listen", daemon=True)
        self.params = {k: v for k, v in params.items() if k not in ("cursor_factory", "context")}
        self.wake = wake
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)

    def run(self) -> None:
        import psycopg

        while not self._stopped.is_set():
            try:
                with psycopg.connect(**self.params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.wake()  # anything that arrived while not listening
                    while not self._stopped.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self.wake()
            except Exception:  # polling covers the gap; try again shortly
                log.warning("the job notification listener lost its connection; reconnecting",
                            exc_info=True)
                self._stopped.wait(1.0)
