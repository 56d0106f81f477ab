"""The example of the core in docs/architecture.md runs as written."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_architecture_example_creates_and_runs_a_job():
    page = (ROOT / "docs" / "architecture.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    # The "..." stands for the application's own work: wait, then show what happened.
    code = code.replace(
        "    ...\n",
        "    for _ in range(200):\n"
        "        if (await queue.get_job(job.id)).status.value == 'completed':\n"
        "            break\n"
        "        await asyncio.sleep(0.01)\n"
        "    print((await queue.get_job(job.id)).status.value, await queue.get_result(job.id))\n",
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "completed {'sent_to': 'user@example.com'}"
