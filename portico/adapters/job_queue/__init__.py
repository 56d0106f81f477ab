"""Queue adapters shipped with the core."""
from __future__ import annotations

from portico.adapters.job_queue.memory_queue import MemoryJobQueueAdapter

__all__ = ["MemoryJobQueueAdapter"]
