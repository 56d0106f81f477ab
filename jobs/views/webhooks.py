"""The webhook trigger: POST /webhooks/jobs creates a job from an authenticated JSON request."""
from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any, NoReturn

from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from jobs.conf import setting
from jobs.models import WebhookIdempotencyKey
from jobs.services import job_queue, job_service
from jobs.views.access import bearer_token, token_matches
from portico.exceptions import InvalidJobError, UnknownJobTypeError
from portico.ports.job import DEFAULT_MAX_RETRIES, DEFAULT_PRIORITY, DEFAULT_QUEUE
from portico.ports.job_queue import SyncJobQueue
from portico.validation import MAX_NAME_LENGTH

FIELDS = ("job_type", "payload", "queue_name", "priority", "scheduled_at", "max_retries", "metadata")
READ_CHUNK = 64 * 1024


class WebhookError(Exception):
    """A request the webhook refuses: an HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> JsonResponse:
        return JsonResponse({"error": self.message}, status=self.status, headers=self.headers)


def _refuse(status: int, message: str, **headers: str) -> NoReturn:
    raise WebhookError(status, message, {k.replace("_", "-"): v for k, v in headers.items()})


# Token-authenticated, not cookie-authenticated: a forged cross-site request has no token.
@csrf_exempt
def create_job(request: HttpRequest) -> JsonResponse:
    """Create a job; 201 with it, 200 with the same job for a repeated Idempotency-Key.

    Every refusal is a JSON ``{"error": ...}`` and stores nothing.
    """
    try:
        if request.method != "POST":
            _refuse(405, f"{request.method} is not allowed here; send POST", Allow="POST")
        _authenticate(request)
        fields = _fields(_read_json(request))
        key = _idempotency_key(request)
        return _create(fields, key)
    except WebhookError as refusal:
        return refusal.response()


def _authenticate(request: HttpRequest) -> None:
    expected = setting("PORTICO_WEBHOOK_TOKEN")
    challenge = {"WWW_Authenticate": 'Bearer realm="portico"'}
    if not expected:
        # No token configured: no request can prove itself, so none is let in.
        _refuse(401, "the webhook is disabled: PORTICO_WEBHOOK_TOKEN is not set on the server",
                **challenge)
    token = bearer_token(request)
    if token is None:
        _refuse(401, "missing credentials: send the header 'Authorization: Bearer <token>'", **challenge)
    if not token_matches(token, expected):
        _refuse(401, "the bearer token is not valid", **challenge)


def _read_json(request: HttpRequest) -> dict[str, Any]:
    if request.content_type != "application/json":
        _refuse(415, f"send the body as application/json, not {request.content_type or 'no content type'}")
    charset = request.content_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        _refuse(415, f"send the body in UTF-8, not {charset}")
    limit = int(setting("PORTICO_WEBHOOK_MAX_BYTES"))
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.strip():
        try:
            length = int(declared)
        except ValueError:
            _refuse(400, f"Content-Length {declared!r} is not a number")
        if length > limit:
            _refuse(413, f"the body is {length} bytes, over the limit of {limit}")
    body = _read_at_most(request, limit)
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        _refuse(400, "the body is not valid UTF-8")
    except (ValueError, RecursionError) as exc:
        _refuse(400, f"the body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        _refuse(400, f"the body must be a JSON object, not {_json_type(data)}")
    return data


def _read_at_most(request: HttpRequest, limit: int) -> bytes:
    """The body, refused as soon as it passes limit (a body may be longer than declared)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := request.read(min(READ_CHUNK, limit + 1 - size)):
        size += len(chunk)
        if size > limit:
            _refuse(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> NoReturn:
    # Python's json accepts NaN and Infinity; JSON (and PostgreSQL's jsonb) does not.
    raise ValueError(f"{name} is not a JSON value")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    """The job's fields from the body, type-checked, with defaults filled in."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        _refuse(400, f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are {', '.join(FIELDS)}")
    for name in ("job_type", "payload"):
        if name not in data:
            _refuse(400, f"{name} is required")
    fields: dict[str, Any] = {
        "job_type": _typed(data, "job_type", str, "a string"),
        "payload": _typed(data, "payload", dict, "an object"),
        "queue_name": _typed(data, "queue_name", str, "a string", DEFAULT_QUEUE),
        "priority": _integer(data, "priority", DEFAULT_PRIORITY),
        "max_retries": _integer(data, "max_retries", DEFAULT_MAX_RETRIES),
        "metadata": _typed(data, "metadata", dict, "an object", {}),
        "scheduled_at": _scheduled_at(data.get("scheduled_at")),
    }
    if fields["max_retries"] < 0:
        _refuse(400, f"max_retries must be 0 or more, not {fields['max_retries']}")
    allowed = setting("PORTICO_WEBHOOK_JOB_TYPES")
    if fields["job_type"] not in allowed:
        _refuse(403, f"job type {fields['job_type']!r} may not be created through the webhook "
                     "(it is not in PORTICO_WEBHOOK_JOB_TYPES)")
    return fields


def _typed(data: dict[str, Any], name: str, kind: type, described: str, default: Any = None) -> Any:
    if name not in data:
        return default
    value = data[name]
    if not isinstance(value, kind):
        _refuse(400, f"{name} must be {described}, not {_json_type(value)}")
    return value


def _integer(data: dict[str, Any], name: str, default: int) -> int:
    value = data.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        _refuse(400, f"{name} must be an integer, not {_json_type(value)}")
    return value


def _scheduled_at(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        _refuse(400, f"scheduled_at must be an ISO 8601 string, not {_json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        _refuse(400, f"scheduled_at {value!r} is not an ISO 8601 date and time")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        _refuse(400, f"scheduled_at {value!r} has no UTC offset; add one, e.g. "
                     f"{parsed.isoformat()}+00:00 or {parsed.isoformat()}Z")
    return parsed.astimezone(UTC)


def _idempotency_key(request: HttpRequest) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_NAME_LENGTH or not (key.isascii() and key.isprintable()):
        _refuse(400, f"Idempotency-Key must be 1 to {MAX_NAME_LENGTH} printable ASCII characters")
    return key


def _fingerprint(fields: dict[str, Any]) -> str:
    """The request's meaning, so that spelling out a default is the same request as leaving it out."""
    canonical = {**fields, "scheduled_at": fields["scheduled_at"].isoformat() if fields["scheduled_at"] else None}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _create(fields: dict[str, Any], key: str | None) -> JsonResponse:
    service = job_service()
    queue: SyncJobQueue = job_queue()  # the adapter the service builds over: the process's one
    fingerprint = _fingerprint(fields)
    if key is not None:
        seen = WebhookIdempotencyKey.objects.filter(key=key).first()
        if seen is not None:
            return _replay(seen, fingerprint)
    try:
        job = service.build_job(
            fields["job_type"], fields["payload"], fields["queue_name"], fields["priority"],
            scheduled_at=fields["scheduled_at"], max_retries=fields["max_retries"],
            metadata=fields["metadata"],
        )
    except UnknownJobTypeError:
        # The registered types are not the caller's business: name only the one it sent.
        _refuse(400, f"no handler is registered for job type {fields['job_type']!r}")
    body = {"id": str(job.id), "status": job.status.value, "queue_name": job.queue_name,
            "job_type": job.job_type}
    try:
        with transaction.atomic():
            if key is not None:
                # First, so a concurrent request with the same key waits here on the unique
                # key, and fails once this commits (or goes ahead if this rolls back).
                WebhookIdempotencyKey.objects.create(
                    key=key, job_id=job.id, request_sha256=fingerprint, response=body
                )
            queue.enqueue_sync(job)
    except IntegrityError:
        # Only the key row can raise it (enqueue turns its own into DuplicateJobError).
        if key is None:
            raise
        return _replay(WebhookIdempotencyKey.objects.get(key=key), fingerprint)
    except InvalidJobError as exc:
        _refuse(400, str(exc))
    return JsonResponse(body, status=201)


def _replay(seen: WebhookIdempotencyKey, fingerprint: str) -> JsonResponse:
    if not hmac.compare_digest(seen.request_sha256, fingerprint):
        _refuse(422, f"Idempotency-Key {seen.key!r} was already used for a different request; "
                     "use a new key for a new job")
    return JsonResponse(seen.response, status=200, headers={"Idempotent-Replayed": "true"})
