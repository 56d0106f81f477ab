"""What the dashboard shows, computed in Python: health badges, sparklines, masked JSON, durations.

Templates only print these values (escaped); nothing from a job reaches a page any other way.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from jobs.conf import setting
from portico.ports.job import BACKLOG_PENDING, FAILING_RATE, STATUS_FLOW, QueueStats

# The order the overview and the filters list statuses in: the way a job moves.
STATUS_ORDER = tuple(status.value for status in STATUS_FLOW)
MASK = "••••••"
# A job completed within the last this-many minutes (by the samples) shows a live worker.
LIVE_WINDOW_MINUTES = 2


# -- masking and JSON ------------------------------------------------------------------------


def redact(value: Any, keys: Iterable[str] | None = None) -> Any:
    """A copy of value with the value of every sensitive key masked, at any depth.

    A key is sensitive when its name contains one of PORTICO_REDACT_KEYS, ignoring case
    ("X-Auth-Token", "db_password", "clientSecret" all match).
    """
    words = [word.lower() for word in (setting("PORTICO_REDACT_KEYS") if keys is None else keys)]
    return _redact(value, words)


def _redact(value: Any, words: list[str]) -> Any:
    if isinstance(value, dict):
        return {key: (MASK if _sensitive(key, words) else _redact(item, words))
                for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item, words) for item in value]
    return value


def _sensitive(key: Any, words: list[str]) -> bool:
    name = str(key).lower()
    return any(word and word in name for word in words)


def pretty_json(value: Any) -> str:
    """Masked, indented JSON text; the template escapes it like any other text."""
    return json.dumps(redact(value), indent=2, sort_keys=True, ensure_ascii=False, default=str)


# -- numbers and times -----------------------------------------------------------------------


def number(value: int) -> str:
    return f"{value:,}"


def percent(rate: float) -> str:
    return f"{rate * 100:.1f}%" if rate else "0%"


def duration(seconds: float | None) -> str:
    """A compact duration: 850ms, 12.3s, 4m 05s, 3h 20m, 2d 4h."""
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


# -- health --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Badge:
    """One health finding: its level is also its CSS class (badge-warning, …)."""

    level: str
    text: str
    advice: str


def health(stats: QueueStats, *, worker_seen: bool, stall_seconds: float | None = None) -> list[Badge]:
    """The seed's "Monitoring Queue Health" rules, most severe first.

    "Pending jobs but no active worker" is the seed's ``running_count == 0 and
    pending_count > 0``, made steady enough to poll: a due job must have waited longer
    than PORTICO_STALL_SECONDS, and no job of the queue may have finished in the last
    minute or two (``worker_seen``), so the instant between two claims of a busy worker
    does not flash a critical badge.
    """
    stall = float(setting("PORTICO_STALL_SECONDS") if stall_seconds is None else stall_seconds)
    badges = []
    if (stats.pending_count > 0 and stats.running_count == 0 and not worker_seen
            and stats.latency_seconds > stall):
        badges.append(Badge("critical", "no active worker",
                            f"pending jobs have waited {duration(stats.latency_seconds)} with "
                            "nothing running; check worker health"))
    if stats.dead_letter_count > 0:
        badges.append(Badge("error", f"{number(stats.dead_letter_count)} dead",
                            "jobs in dead letter: review and requeue or discard them"))
    if stats.is_failing:
        badges.append(Badge("warning", f"{percent(stats.failure_rate)} failing",
                            f"failure rate above {FAILING_RATE:.0%}: investigate error patterns"))
    if stats.has_backlog:
        badges.append(Badge("warning", f"backlog {number(stats.pending_count)}",
                            f"over {number(BACKLOG_PENDING)} pending jobs: consider scaling up workers"))
    return badges


# -- the last hour ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sparkline:
    """Per-minute completed and failed runs over the last hour, as SVG path data."""

    completed: list[int | None]
    failed: list[int | None]
    width: int = 120
    height: int = 24
    done_path: str = field(init=False)
    fail_path: str = field(init=False)

    def __post_init__(self) -> None:
        top = max([v for v in (*self.completed, *self.failed) if v is not None] + [1])
        object.__setattr__(self, "done_path", self._path(self.completed, top))
        object.__setattr__(self, "fail_path", self._path(self.failed, top))

    def _path(self, values: Sequence[int | None], top: int) -> str:
        step = self.width / max(1, len(values) - 1)
        parts, drawing = [], False
        for index, value in enumerate(values):
            if value is None:
                drawing = False  # a minute nobody sampled: a gap, not a zero
                continue
            x = round(index * step, 1)
            y = round(self.height - 1 - (self.height - 2) * value / top, 1)
            parts.append(f"{'L' if drawing else 'M'}{x} {y}")
            drawing = True
        return " ".join(parts)

    @property
    def has_data(self) -> bool:
        return any(value is not None for value in self.completed)

    @property
    def completed_total(self) -> int:
        return sum(value for value in self.completed if value)

    @property
    def failed_total(self) -> int:
        return sum(value for value in self.failed if value)

    @property
    def summary(self) -> str:
        if not self.has_data:
            return "no samples yet: the maintenance records one a minute"
        return (f"last hour: {number(self.completed_total)} completed, "
                f"{number(self.failed_total)} failed runs")


def per_minute(samples: Sequence[tuple[datetime, int, int]], current: tuple[int, int],
               now: datetime, minutes: int = 60) -> tuple[list[int | None], list[int | None]]:
    """Completed and failed runs in each of the last ``minutes`` minutes, from totals samples.

    A minute's count is the next sample minus its own (the current totals for this
    minute). Where minutes went unsampled the difference is spread evenly over them;
    before the first sample there is nothing to say (None).
    """
    this_minute = now.replace(second=0, microsecond=0)
    points = sorted({minute: (done, failed) for minute, done, failed in samples}.items())
    points.append((this_minute + timedelta(minutes=1), current))
    done: dict[datetime, int] = {}
    failed: dict[datetime, int] = {}
    for (start, (done_a, failed_a)), (end, (done_b, failed_b)) in pairwise(points):
        span = max(1, int((end - start).total_seconds() // 60))
        for step in range(span):
            minute = start + timedelta(minutes=step)
            # Totals only grow; a smaller later value means counters were reset: show 0.
            done[minute] = max(0, done_b - done_a) // span
            failed[minute] = max(0, failed_b - failed_a) // span
    window = [this_minute - timedelta(minutes=minutes - 1 - i) for i in range(minutes)]
    return [done.get(m) for m in window], [failed.get(m) for m in window]


def worker_seen(samples: Sequence[tuple[datetime, int, int]], stats: QueueStats, now: datetime) -> bool:
    """A job of the queue is running, or one completed in the last LIVE_WINDOW_MINUTES minutes.

    Completions only: failures also come from the rescue of jobs whose worker died, which
    is no sign that anything is serving the queue.
    """
    if stats.running_count > 0:
        return True
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=LIVE_WINDOW_MINUTES - 1)
    earlier = [done for minute, done, _ in samples if minute >= since]
    return bool(earlier) and stats.completed_total > earlier[0]
