"""POST /webhooks/jobs on the real test database: every refusal stores nothing; a good request runs to completion."""
from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg
import pytest
from django.core.handlers.asgi import ASGIRequest
from django.db import connection, connections
from django.test import Client

from jobs.models import JobRecord, WebhookIdempotencyKey
from jobs.queue import DatabaseJobQueueAdapter
from jobs.registry import get_handlers
from jobs.views import webhooks
from portico.kits.job import JobExecutor
from portico.ports.job import JobStatus

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/webhooks/jobs"
TOKEN = "webhook-test-token-5f1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD = {"job_type": "test.noop", "payload": {"order": 42}}


@pytest.fixture(autouse=True)
def webhook_settings(settings, empty_store):
    """A configured webhook over the test handlers: test.noop is allowed, test.record is not."""
    settings.PORTICO_WEBHOOK_TOKEN = TOKEN
    settings.PORTICO_WEBHOOK_JOB_TYPES = ["test.noop", "unregistered.type"]
    settings.PORTICO_HANDLERS = ["tests.support.handlers.RecordHandler", "tests.support.handlers.NoopHandler"]
    return settings


Post = Callable[..., Any]


@pytest.fixture
def post() -> Post:
    """POST a body (a dict is sent as JSON) with the good token unless headers say otherwise."""
    client = Client()

    def send(body: Any = GOOD, *, headers: dict[str, str] | None = None,
             content_type: str = "application/json", **extra: Any):
        data = json.dumps(body) if isinstance(body, dict | list) else body
        return client.post(URL, data=data, content_type=content_type,
                           headers=AUTH if headers is None else headers, **extra)

    return send


def stored() -> tuple[int, int]:
    return JobRecord.objects.count(), WebhookIdempotencyKey.objects.count()


def assert_refused(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = json.loads(response.content)["error"]
    assert fragment in error, error
    assert stored() == (0, 0)


# -- the happy path -----------------------------------------------------------------------


def test_a_valid_request_creates_a_job_that_a_worker_then_completes(post):
    response = post({"job_type": "test.noop", "payload": {"order": 42, "items": ["a", "b"]},
                     "queue_name": "webhooks", "priority": 7, "max_retries": 1,
                     "metadata": {"source": "shop", "trace": "abc"}})

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"id", "status", "queue_name", "job_type"}
    assert body["status"] == "pending" and body["queue_name"] == "webhooks"
    assert body["job_type"] == "test.noop"
    record = JobRecord.objects.get(id=UUID(body["id"]))
    assert (record.payload, record.metadata) == ({"order": 42, "items": ["a", "b"]},
                                                 {"source": "shop", "trace": "abc"})
    assert (record.priority, record.max_retries, record.status) == (7, 1, "pending")

    queue = DatabaseJobQueueAdapter()
    try:
        (claimed,) = queue.dequeue_many_sync("webhooks", 10)
        done = asyncio.run(JobExecutor(queue, get_handlers()).execute(claimed))
    finally:
        queue.close_sync()
    assert done is not None and done.status is JobStatus.COMPLETED
    record.refresh_from_db()
    assert (record.status, record.attempt) == ("completed", 1)
    assert record.completed_at is not None


def test_a_scheduled_at_with_an_offset_is_stored_in_utc_and_the_job_waits_for_it(post):
    response = post({**GOOD, "scheduled_at": "2031-06-01T09:30:00+02:00"})
    assert response.status_code == 201, response.content
    assert response.json()["status"] == "scheduled"
    record = JobRecord.objects.get(id=response.json()["id"])
    assert record.scheduled_at.isoformat() == "2031-06-01T07:30:00+00:00"

    zulu = post({**GOOD, "scheduled_at": "2031-06-01T07:30:00Z"})
    assert JobRecord.objects.get(id=zulu.json()["id"]).scheduled_at == record.scheduled_at


def test_markup_in_the_payload_and_metadata_is_stored_exactly_as_sent(post):
    hostile = {
        "script": "<script>alert(1)</script>",
        "img": '<img src=x onerror="alert(1)">',
        "close": "</script><script>alert(2)</script>",
        "link": "javascript:alert(3)",
        "quotes": "'\"&amp;",
        "unicode": "ünïcødé ✓ \u2028",
    }
    response = post({"job_type": "test.noop", "payload": hostile, "metadata": {"note": hostile["script"]}})
    assert response.status_code == 201
    record = JobRecord.objects.get(id=response.json()["id"])
    assert record.payload == hostile
    assert record.metadata == {"note": "<script>alert(1)</script>"}


def test_a_csrf_checking_client_is_let_through_because_the_token_authenticates(post):
    response = Client(enforce_csrf_checks=True).post(URL, data=json.dumps(GOOD),
                                                     content_type="application/json", headers=AUTH)
    assert response.status_code == 201


def test_the_content_type_may_name_utf_8_as_its_charset(post):
    response = post(GOOD, content_type="application/json; charset=UTF-8")
    assert response.status_code == 201


# -- refusals: each stores nothing --------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_a_method_other_than_post_is_refused_with_405(method):
    response = getattr(Client(), method)(URL, headers=AUTH)
    assert response["Allow"] == "POST"
    assert_refused(response, 405, "send POST")


@pytest.mark.parametrize(("headers", "fragment"), [
    ({}, "missing credentials"),
    ({"Authorization": "Bearer"}, "missing credentials"),
    ({"Authorization": f"Basic {TOKEN}"}, "missing credentials"),
    ({"Authorization": "Bearer not-the-token"}, "not valid"),
    ({"Authorization": f"Bearer {TOKEN}x"}, "not valid"),
    ({"Authorization": "Bearer tökén"}, "not valid"),
], ids=["no header", "no token", "wrong scheme", "wrong token", "longer token", "non-ascii token"])
def test_a_request_without_the_right_bearer_token_is_refused_with_401(post, headers, fragment):
    response = post(headers=headers)
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert_refused(response, 401, fragment)


def test_the_bearer_scheme_is_matched_without_regard_to_case(post):
    assert post(headers={"Authorization": f"bearer {TOKEN}"}).status_code == 201


def test_with_no_token_configured_every_request_is_refused_with_401(post, settings):
    settings.PORTICO_WEBHOOK_TOKEN = None
    assert_refused(post(), 401, "PORTICO_WEBHOOK_TOKEN is not set")
    assert_refused(post(headers={"Authorization": "Bearer "}), 401, "PORTICO_WEBHOOK_TOKEN is not set")
    assert_refused(post(headers={"Authorization": "Bearer None"}), 401, "PORTICO_WEBHOOK_TOKEN is not set")


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "application/xml", "application/json; charset=latin-1",
])
def test_a_body_that_is_not_utf_8_json_by_its_content_type_is_refused_with_415(post, content_type):
    assert_refused(post(json.dumps(GOOD), content_type=content_type), 415, "send the body")


def test_a_body_declared_larger_than_the_limit_is_refused_with_413_before_it_is_read(post, settings):
    settings.PORTICO_WEBHOOK_MAX_BYTES = 1000
    body = json.dumps({**GOOD, "payload": {"blob": "x" * 2000}})
    assert_refused(post(body), 413, "over the limit of 1000")


def test_a_body_longer_than_its_declared_length_is_cut_off_at_the_limit_with_413(settings):
    # Under ASGI a chunked body has no Content-Length: only counting while reading stops it.
    settings.PORTICO_WEBHOOK_MAX_BYTES = 1000
    body = json.dumps({**GOOD, "payload": {"blob": "x" * 5000}}).encode()
    scope = {
        "type": "http", "method": "POST", "path": URL, "query_string": b"",
        "headers": [(b"content-type", b"application/json"),
                    (b"authorization", f"Bearer {TOKEN}".encode())],
    }
    response = webhooks.create_job(ASGIRequest(scope, io.BytesIO(body)))
    assert_refused(response, 413, "over the limit of 1000")


def test_a_body_at_the_limit_is_accepted(post, settings):
    body = json.dumps({**GOOD, "payload": {"blob": ""}})
    padded = json.dumps({**GOOD, "payload": {"blob": "x" * (1000 - len(body))}})
    assert len(padded) == 1000
    settings.PORTICO_WEBHOOK_MAX_BYTES = 1000
    assert post(padded).status_code == 201


@pytest.mark.parametrize(("body", "fragment"), [
    ("{not json", "not valid JSON"),
    ("  ", "not valid JSON"),
    ('{"job_type": "test.noop", "payload": {"x": NaN}}', "NaN is not a JSON value"),
    ('{"job_type": "test.noop", "payload": {"x": Infinity}}', "Infinity is not a JSON value"),
    ("[1, 2]", "must be a JSON object, not an array"),
    ('"text"', "must be a JSON object, not a string"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
], ids=["broken", "empty", "nan", "infinity", "array", "string", "deeply nested"])
def test_a_body_that_is_not_a_json_object_is_refused_with_400(post, body, fragment):
    assert_refused(post(body), 400, fragment)


def test_a_body_that_is_not_utf_8_is_refused_with_400(post):
    assert_refused(post(b'{"job_type": "test.noop", "payload": {"x": "\xff"}}'), 400, "not valid UTF-8")


@pytest.mark.parametrize(("change", "fragment"), [
    ({"job_type": None}, "job_type must be a string, not null"),
    ({"job_type": 12}, "job_type must be a string, not a number"),
    ({"payload": [1, 2]}, "payload must be an object, not an array"),
    ({"payload": "x"}, "payload must be an object, not a string"),
    ({"queue_name": 5}, "queue_name must be a string"),
    ({"queue_name": ""}, "queue_name must be a non-empty string"),
    ({"priority": "high"}, "priority must be an integer, not a string"),
    ({"priority": True}, "priority must be an integer, not a boolean"),
    ({"priority": 1.5}, "priority must be an integer, not a number"),
    ({"priority": 2**40}, "priority must be between"),
    ({"max_retries": -1}, "max_retries must be 0 or more"),
    ({"max_retries": "3"}, "max_retries must be an integer"),
    ({"metadata": [1]}, "metadata must be an object, not an array"),
    ({"metadata": None}, "metadata must be an object, not null"),
    ({"scheduled_at": "2031-06-01T09:30:00"}, "has no UTC offset"),
    ({"scheduled_at": "next tuesday"}, "is not an ISO 8601 date and time"),
    ({"scheduled_at": 1_900_000_000}, "scheduled_at must be an ISO 8601 string"),
    ({"queue": "default"}, "unknown field(s) 'queue'"),
    ({"payload": {"text": "a\u0000b"}}, "NUL character"),
    ({"metadata": {"text": "a\u0000b"}}, "NUL character"),
    ({"job_type": "unregistered.type"}, "no handler is registered for job type 'unregistered.type'"),
], ids=lambda value: json.dumps(value) if isinstance(value, dict) else None)
def test_a_field_of_the_wrong_type_or_value_is_refused_with_400(post, change, fragment):
    assert_refused(post({**GOOD, **change}), 400, fragment)


@pytest.mark.parametrize("missing", ["job_type", "payload"])
def test_a_missing_required_field_is_refused_with_400(post, missing):
    body = {key: value for key, value in GOOD.items() if key != missing}
    assert_refused(post(body), 400, f"{missing} is required")


def test_a_payload_over_the_job_size_limit_is_refused_with_400(post, settings):
    settings.PORTICO_MAX_PAYLOAD_BYTES = 1000
    assert_refused(post({**GOOD, "payload": {"blob": "x" * 2000}}), 400, "over the limit of 1000")


def test_a_registered_job_type_not_allowed_for_the_webhook_is_refused_with_403(post):
    assert_refused(post({**GOOD, "job_type": "test.record"}), 403, "'test.record' may not be created")


def test_by_default_no_job_type_is_allowed(post, settings):
    del settings.PORTICO_WEBHOOK_JOB_TYPES
    assert_refused(post(), 403, "not in PORTICO_WEBHOOK_JOB_TYPES")


@pytest.mark.parametrize("key", ["", "   ", "k" * 201, "tab\there", "ünicode"],
                         ids=["empty", "blank", "too long", "control character", "non-ascii"])
def test_a_malformed_idempotency_key_is_refused_with_400(post, key):
    assert_refused(post(headers={**AUTH, "Idempotency-Key": key}), 400, "Idempotency-Key must be")


# -- idempotency ------------------------------------------------------------------------


def test_the_same_idempotency_key_twice_gives_the_same_job_with_200(post):
    headers = {**AUTH, "Idempotency-Key": "order-42"}
    first = post(headers=headers)
    second = post(headers=headers)

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert stored() == (1, 1)


def test_spelling_out_the_defaults_is_the_same_request_for_an_idempotency_key(post):
    headers = {**AUTH, "Idempotency-Key": "order-43"}
    first = post(GOOD, headers=headers)
    again = post({**GOOD, "queue_name": "default", "priority": 0, "max_retries": 3, "metadata": {},
                  "scheduled_at": None}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]


def test_an_idempotency_key_reused_for_a_different_request_is_refused_with_422(post):
    headers = {**AUTH, "Idempotency-Key": "order-44"}
    first = post(headers=headers)
    other = post({**GOOD, "payload": {"order": 99}}, headers=headers)

    assert first.status_code == 201
    assert other.status_code == 422
    assert "already used for a different request" in other.json()["error"]
    assert stored() == (1, 1)


def test_different_idempotency_keys_give_different_jobs(post):
    ids = {post(headers={**AUTH, "Idempotency-Key": f"k-{n}"}).json()["id"] for n in range(3)}
    assert len(ids) == 3
    assert stored() == (3, 3)


def test_a_refused_request_does_not_use_up_its_idempotency_key(post):
    headers = {**AUTH, "Idempotency-Key": "retry-me"}
    assert post({**GOOD, "payload": {"text": "a\u0000b"}}, headers=headers).status_code == 400
    assert stored() == (0, 0)
    assert post(headers=headers).status_code == 201


def test_concurrent_requests_with_one_idempotency_key_create_one_job():
    rounds, senders = 5, 4
    results: list[tuple[int, int, dict[str, Any]]] = []
    lock = threading.Lock()

    def send(round_number: int, barrier: threading.Barrier) -> None:
        client = Client()
        try:
            barrier.wait(timeout=30)
            response = client.post(URL, data=json.dumps(GOOD), content_type="application/json",
                                   headers={**AUTH, "Idempotency-Key": f"race-{round_number}"})
            with lock:
                results.append((round_number, response.status_code, response.json()))
        finally:
            connections.close_all()

    for round_number in range(rounds):
        barrier = threading.Barrier(senders)
        threads = [threading.Thread(target=send, args=(round_number, barrier)) for _ in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)

    assert len(results) == rounds * senders
    for round_number in range(rounds):
        answers = [(status, body) for n, status, body in results if n == round_number]
        assert sorted(status for status, _ in answers) == [200] * (senders - 1) + [201]
        assert len({body["id"] for _, body in answers}) == 1
    assert stored() == (rounds, rounds)


def _wait_for_a_blocked_backend(conn: psycopg.Connection, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Statistics views are snapshotted once per transaction: drop the snapshot each time.
        conn.execute("SELECT pg_stat_clear_snapshot()")
        waiting = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ).fetchone()[0]
        if waiting:
            return
        time.sleep(0.01)
    raise AssertionError(f"no request waited on the idempotency key within {timeout}s")


@pytest.fixture
def other_session():
    """A second, independent database session on the test database (PostgreSQL only)."""
    if connection.vendor != "postgresql":
        pytest.fail("this test needs PostgreSQL: set DATABASE_URL=postgres://...", pytrace=False)
    db = connection.settings_dict
    conn = psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"],
                           password=db["PASSWORD"] or None, dbname=db["NAME"])
    yield conn
    conn.close()


def _post_in_thread(headers: dict[str, str], out: list[Any]) -> threading.Thread:
    def send() -> None:
        try:
            out.append(Client().post(URL, data=json.dumps(GOOD), content_type="application/json",
                                     headers=headers))
        finally:
            connections.close_all()

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.postgres
def test_a_request_waiting_on_a_key_another_transaction_rolls_back_creates_the_job(other_session):
    other_session.execute(
        "INSERT INTO portico_webhook_idempotency_key (key, job_id, request_sha256, response) "
        "VALUES ('contended', gen_random_uuid(), 'x', '{}')"
    )
    out: list[Any] = []
    thread = _post_in_thread({**AUTH, "Idempotency-Key": "contended"}, out)
    try:
        _wait_for_a_blocked_backend(other_session)
    finally:
        other_session.rollback()
        thread.join(timeout=30)
    (response,) = out
    assert response.status_code == 201
    assert stored() == (1, 1)


@pytest.mark.postgres
def test_a_request_waiting_on_a_key_another_transaction_commits_creates_nothing(other_session):
    other_session.execute(
        "INSERT INTO portico_webhook_idempotency_key (key, job_id, request_sha256, response) "
        "VALUES ('contended', gen_random_uuid(), 'another request', '{}')"
    )
    out: list[Any] = []
    thread = _post_in_thread({**AUTH, "Idempotency-Key": "contended"}, out)
    try:
        _wait_for_a_blocked_backend(other_session)
    finally:
        other_session.commit()
        thread.join(timeout=30)
    (response,) = out
    assert response.status_code == 422
    assert stored() == (0, 1)
