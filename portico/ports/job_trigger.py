"""The trigger port: something outside (a clock, a webhook) that creates jobs."""
from __future__ import annotations

from abc import ABC, abstractmethod


class JobTrigger(ABC):
    @abstractmethod
    async def start(self) -> None:
        """Begin creating jobs from this trigger's source."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop creating jobs; returns once the trigger is idle."""

    @property
    @abstractmethod
    def is_running(self) -> bool:
        """Whether the trigger is started."""
