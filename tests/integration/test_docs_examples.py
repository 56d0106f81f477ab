"""The code in docs/workers.md runs as written: a decorated handler, and jobs created from async and sync code."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.db import connection

from jobs.models import JobRecord

ROOT = Path(__file__).resolve().parents[2]

# Runs in a process of its own, so the handler the page registers stays out of this one's
# registry. The blocks run in the page's order: the handler, the async creation (inside a
# coroutine, as application code would await it), then the sync one.
CHILD = r'''
import asyncio, os, re, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portico_site.settings")
django.setup()
from django.db import transaction

blocks = re.findall(r"```python\n(.*?)```", open(sys.argv[1]).read(), re.S)
handler, create_async, create_sync = blocks
namespace = {}
exec(handler, namespace)
body = "".join("    " + line + "\n" for line in create_async.splitlines())
exec("async def main():\n" + body + "    return job\n", namespace)
first = asyncio.run(namespace["main"]())
with transaction.atomic():
    exec(create_sync, namespace)
second = namespace["job"]
result = asyncio.run(namespace["job_service"]().job_queue.get_job(second.id))
print(first.id, first.queue_name, second.id, second.queue_name, result.status.value)
'''


def child_environment() -> dict[str, str]:
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    return {**os.environ, "DATABASE_URL": url, "DJANGO_DEBUG": "1"}


def test_the_workers_page_examples_register_a_handler_and_store_jobs(empty_store):
    run = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "docs" / "workers.md")],
                         cwd=ROOT, env=child_environment(), capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    first_id, first_queue, second_id, second_queue, status = run.stdout.split()
    assert (first_queue, second_queue, status) == ("reports", "default", "pending")
    stored = {str(record.id): record for record in JobRecord.objects.all()}
    assert set(stored) == {first_id, second_id}
    assert {record.job_type for record in stored.values()} == {"reports.nightly"}
    assert stored[first_id].payload == {"day": "2026-12-01"}
