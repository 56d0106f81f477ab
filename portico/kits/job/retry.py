"""How long a failed job waits before its next attempt."""
from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped.

    The n-th retry waits between half and all of ``min(cap, base * 2 ** (n - 1))`` seconds:
    growth keeps a failing dependency from being hammered, jitter keeps a burst of
    failures from coming back as a burst, and the cap keeps the wait finite.
    """

    base: float = 2.0
    cap: float = 3600.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("retry base and cap must not be negative")

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry number ``retry_number`` (1 for the first retry)."""
        exponent = max(0, retry_number - 1)
        ceiling = self.cap if exponent >= 64 else min(self.cap, self.base * 2.0**exponent)
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)
