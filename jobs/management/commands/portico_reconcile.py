"""manage.py portico_reconcile: recount jobs per queue and status, and report (or fix) counter drift."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from jobs.services import job_queue


class Command(BaseCommand):
    help = (
        "Recount jobs per (queue, status) from the job table and compare with the counters "
        "the dashboard and /metrics read. Exits 1 if they drift; --fix corrects them."
    )

    def add_arguments(self, parser):
        parser.add_argument("--fix", action="store_true", help="append corrections for any drift")
        parser.add_argument("--database", default="default", help="the database alias to check")

    def handle(self, *args, fix: bool = False, database: str = "default", **options):
        queue = job_queue(database)
        queue.compact_counters_sync()
        drift = queue.fix_counter_drift_sync() if fix else queue.counter_drift_sync()
        if not drift:
            self.stdout.write(self.style.SUCCESS("counters match the job table: no drift"))
            return
        for (queue_name, status), (actual, kept) in sorted(drift.items()):
            self.stdout.write(
                f"queue={queue_name} status={status} rows={actual} counter={kept} "
                f"drift={kept - actual:+d}"
            )
        if fix:
            self.stdout.write(self.style.SUCCESS(f"corrected {len(drift)} counter(s)"))
            return
        raise CommandError(f"{len(drift)} counter(s) drifted; run with --fix to correct them")
