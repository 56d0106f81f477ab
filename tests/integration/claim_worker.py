"""A separate OS process that claims and acknowledges jobs until none are left (used by the store tests)."""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portico_site.settings")
sys.path.insert(0, os.getcwd())

import django  # noqa: E402

django.setup()

from jobs.queue import DatabaseJobQueueAdapter  # noqa: E402

queue = DatabaseJobQueueAdapter()
claimed: list[str] = []
empty_rounds = 0
while empty_rounds < 3:
    batch = queue.dequeue_many_sync("default", 7)
    if not batch:
        empty_rounds += 1
        continue
    empty_rounds = 0
    done = queue.acknowledge_many_sync(batch)
    assert len(done) == len(batch), "a claim this process held was taken from it"
    claimed += [str(job.id) for job in batch]

with open(sys.argv[1], "w") as out:
    json.dump(claimed, out)
