"""Checks every adapter applies before it stores a job, so bad input fails the same way everywhere."""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from uuid import UUID

from portico.exceptions import InvalidJobError
from portico.ports.job import Job, JobStatus

DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
MAX_NAME_LENGTH = 200
# Priorities are stored in a 32-bit column.
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1
# json.dumps builds a new encoder for every call that passes options; this one is reused.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_CONTROL = re.compile(r"[\x00\r\n\t]")


def check_aware(value: datetime | None, name: str) -> None:
    if value is None:
        return
    if not isinstance(value, datetime):
        raise InvalidJobError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidJobError(
            f"{name} is a naive datetime ({value.isoformat()}); pass a timezone-aware one, "
            "e.g. datetime.now(UTC)"
        )


def _walk(value: Any, path: str) -> Iterator[str]:
    """Yield a description of each part of value that does not survive a JSON round trip."""
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            yield f"{path} is {value!r}, which JSON cannot represent"
        return
    if isinstance(value, str):
        if "\x00" in value:
            yield f"{path} contains a NUL character"
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                yield f"{path} has a key {key!r} that is not a string"
                continue
            if "\x00" in key:
                yield f"{path} has a key containing a NUL character"
                continue
            yield from _walk(item, f"{path}[{key!r}]")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")
        return
    yield f"{path} is a {type(value).__name__}, which is not JSON-serializable"


def _is_clean(value: Any) -> bool:
    """The common case, answered fast: exact JSON types, finite floats, no NUL, string keys.

    Anything else (a failure, or a subclass of a JSON type) goes to _walk, which says what
    is wrong and where; building its paths for every value cost about a quarter of
    check_job's time (12.1 -> 9.3 us for a small nested payload).
    """
    kind = type(value)
    if kind is str:
        return "\x00" not in value
    if kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or "\x00" in key or not _is_clean(item):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            if not _is_clean(item):
                return False
        return True
    return False


def check_json(value: Any, name: str, max_bytes: int | None = None) -> str:
    """Return value as JSON text, or raise InvalidJobError naming the offending key."""
    if not isinstance(value, dict):
        raise InvalidJobError(f"{name} must be a dict, not {type(value).__name__}")
    if not value:
        text = "{}"
    else:
        if not _is_clean(value):
            problem = next(_walk(value, name), None)
            if problem is not None:
                raise InvalidJobError(problem)
        text = _encode(value)
    # A character is at most 4 bytes of UTF-8: short texts need no encoding to be measured.
    if max_bytes is not None and len(text) * 4 > max_bytes:
        size = len(text.encode("utf-8"))
        if size > max_bytes:
            raise InvalidJobError(
                f"{name} is {size} bytes, over the limit of {max_bytes}; "
                "store large data elsewhere and pass a reference"
            )
    return text


def _check_name(value: Any, name: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidJobError(f"{name} must be a non-empty string")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidJobError(f"{name} is longer than {MAX_NAME_LENGTH} characters")
    if _CONTROL.search(value):
        raise InvalidJobError(f"{name} contains control characters")


def _check_int(value: Any, name: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidJobError(f"{name} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidJobError(f"{name} must be between {low} and {high}, not {value}")


def check_job(job: Job, max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES) -> tuple[str, str]:
    """Return the job's payload and metadata as JSON text, or raise InvalidJobError (a ValueError)."""
    if not isinstance(job.id, UUID):
        raise InvalidJobError(f"id must be a UUID, not {type(job.id).__name__}")
    _check_name(job.queue_name, "queue_name")
    _check_name(job.job_type, "job_type")
    # Plain ints in range pass without a call each; anything else gets the full check.
    priority, max_retries, retry_count = job.priority, job.max_retries, job.retry_count
    if type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        _check_int(priority, "priority", MIN_PRIORITY, MAX_PRIORITY)
    if type(max_retries) is not int or not 0 <= max_retries <= 1000:
        _check_int(max_retries, "max_retries", 0, 1000)
    if type(retry_count) is not int or not 0 <= retry_count <= 1000:
        _check_int(retry_count, "retry_count", 0, 1000)
    if job.created_by is not None and not isinstance(job.created_by, UUID):
        raise InvalidJobError(f"created_by must be a UUID, not {type(job.created_by).__name__}")
    for name in ("scheduled_at", "started_at", "completed_at", "failed_at", "created_at"):
        value = getattr(job, name)
        if value is not None:
            check_aware(value, name)
    if job.status not in (JobStatus.PENDING, JobStatus.SCHEDULED):
        raise InvalidJobError(
            f"a new job must be pending or scheduled, not {job.status.value}"
        )
    return (
        check_json(job.payload, "payload", max_payload_bytes),
        check_json(job.metadata, "metadata", max_payload_bytes),
    )


def clean_text(value: str | None, limit: int = 10_000) -> str | None:
    """Error text comes from anywhere: drop NUL characters and bound its length."""
    if value is None:
        return None
    value = str(value).replace("\x00", "\ufffd")
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value
