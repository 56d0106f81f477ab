"""manage.py portico_worker: the built-in worker, running jobs from the database until signalled."""
from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from jobs.worker import Worker
from portico.ports.job import DEFAULT_QUEUE


class Command(BaseCommand):
    help = (
        "Claim and run jobs from the given queues until SIGTERM or SIGINT. The first signal "
        "stops claiming, lets jobs in flight finish within PORTICO_GRACE_PERIOD and releases "
        "the rest; a second signal exits at once. Exits with status 3 if the database stops "
        "answering heartbeats for a whole lease (PORTICO_LEASE_SECONDS)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--queues", default=DEFAULT_QUEUE,
                            help=f"comma-separated queue names to serve (default: {DEFAULT_QUEUE})")
        parser.add_argument("--concurrency", type=int, default=10,
                            help="jobs run at the same time (default: 10)")
        parser.add_argument("--batch", type=int, default=10,
                            help="most jobs claimed in one statement (default: 10)")

    def handle(self, *args, queues: str, concurrency: int, batch: int, **options):
        names = [name.strip() for name in queues.split(",") if name.strip()]
        if not names:
            raise CommandError("--queues needs at least one queue name")
        if concurrency < 1:
            raise CommandError("--concurrency must be at least 1")
        if batch < 1:
            raise CommandError("--batch must be at least 1")
        status = Worker(names, concurrency, batch).run()
        if status:
            sys.exit(status)
