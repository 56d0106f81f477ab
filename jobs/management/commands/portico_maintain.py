"""manage.py portico_maintain: the job store's upkeep, for deployments with neither a built-in worker nor Celery beat."""
from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from jobs import maintenance


class Command(BaseCommand):
    help = (
        "Run the job store's upkeep (jobs.maintenance): " + ", ".join(maintenance.TASKS) + ". "
        "Once and exit, or with --loop each task at its PORTICO_*_INTERVAL until SIGTERM or "
        "SIGINT. Several may run at once: each task takes an advisory lock, so one process "
        "at a time does it. The built-in worker and Celery beat already run these."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true",
                            help="keep running each task at its interval until signalled")
        parser.add_argument("--only", action="append", metavar="NAME", choices=sorted(maintenance.TASKS),
                            help="run only this task (may be given more than once)")

    def handle(self, *args, loop: bool = False, only: list[str] | None = None, **options):
        names = list(dict.fromkeys(only or maintenance.TASKS))
        if not loop:
            for name in names:
                try:
                    ran = maintenance.run(name)
                except Exception as exc:
                    raise CommandError(f"maintenance {name!r} failed: {type(exc).__name__}: {exc}") from exc
                self.stdout.write(f"{name}: {'done' if ran else 'skipped, another process is running it'}")
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        last_run: dict[str, float] = {}
        while not stop.is_set():
            stop.wait(maintenance.run_due(last_run, names))
