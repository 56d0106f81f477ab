"""manage.py portico_demo: seed the demo queues with jobs in every state, or keep live traffic coming."""
from __future__ import annotations

import random
import signal
import threading
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from jobs import demo
from jobs.queue import DatabaseJobQueueAdapter
from jobs.registry import get_handlers
from jobs.services import job_queue
from portico.ports.job import JobStatus


class Command(BaseCommand):
    help = (
        "Seed the demo queues (" + ", ".join(demo.QUEUES) + ") with jobs in all seven states, "
        "through the queue's own operations. --reset empties the job store first. --live "
        "seeds nothing and enqueues bursts of demo jobs every second or two until SIGTERM or "
        "SIGINT. A worker runs the demo jobs only with PORTICO_DEMO=1 in its environment."
    )

    def add_arguments(self, parser):
        parser.add_argument("--reset", action="store_true",
                            help="delete every job and its history before seeding")
        parser.add_argument("--live", action="store_true",
                            help="keep enqueueing demo jobs until SIGTERM or SIGINT (no seeding)")
        parser.add_argument("--seed", type=int, default=None,
                            help="seed of the random choices, for a repeatable demo")
        parser.add_argument("--login-file", type=Path, default=None,
                            help=f"create or update the user {demo.DEMO_USERNAME!r} with the password "
                                 "kept in this file (made up and written on first use)")

    def handle(self, *args, reset: bool, live: bool, seed: int | None, login_file: Path | None,
               **options):
        if reset and live:
            raise CommandError("--reset empties the store and seeds it; run it first, then --live")
        rng = random.Random(seed)
        self._warn_without_handlers()
        if login_file is not None:
            username, role = demo.ensure_demo_login(demo.demo_password(login_file))
            self.stdout.write(f"demo login: user {username!r}, {role}; password in {login_file}")
        store = job_queue()
        if live:
            self._live(store, rng)
            return
        if reset:
            deleted = demo.empty_job_store(store)
            self.stdout.write(f"emptied the job store: {deleted} job(s) deleted")
        try:
            seeded = demo.seed(store, rng)
        except demo.DemoError as exc:
            raise CommandError(str(exc)) from exc
        states = [status.value for status in JobStatus]
        self.stdout.write("seeded " + ", ".join(states) + " jobs:")
        for queue_name, counts in seeded.items():
            self.stdout.write(f"  {queue_name:<9} " + "  ".join(f"{s}={counts[s]}" for s in states))

    def _warn_without_handlers(self) -> None:
        missing = [job_type for job_type in demo.JOB_TYPES if job_type not in get_handlers()]
        if missing:
            self.stderr.write(self.style.WARNING(
                "warning: no handler is registered for " + ", ".join(missing) + "; start the "
                "worker with PORTICO_DEMO=1 or it fails these jobs"
            ))

    def _live(self, store: DatabaseJobQueueAdapter, rng: random.Random) -> None:
        stop = threading.Event()

        def stopping(signum: int, frame: object) -> None:
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stopping)
        self.stdout.write(
            "portico_demo --live: enqueueing demo jobs into " + ", ".join(demo.QUEUES)
            + " every 1-2 s until SIGTERM or SIGINT"
        )
        self.stdout.flush()
        total = demo.generate(store, stop, rng)
        store.close_sync()
        self.stdout.write(f"portico_demo --live stopped: {total} job(s) enqueued")
