"""manage.py portico_scheduler: create the jobs of PORTICO_SCHEDULES at their fire times until SIGTERM or SIGINT."""
from __future__ import annotations

import asyncio
import logging
import signal

from django.core.management.base import BaseCommand, CommandError

from jobs.triggers import ScheduleError, ScheduleTrigger

log = logging.getLogger("portico.scheduler")


class Command(BaseCommand):
    help = (
        "Run the schedule trigger: create the job of every PORTICO_SCHEDULES entry at each of "
        "its fire times. Several may run at once (one job per fire time all the same). "
        "SIGTERM or SIGINT stops it after the check in progress; exit status 0."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--interval", type=float, default=None,
            help="seconds between checks for due fire times (default PORTICO_SCHEDULER_INTERVAL)",
        )

    def handle(self, *args, interval: float | None = None, **options):
        try:
            trigger = ScheduleTrigger(interval=interval)
            schedules = trigger.load()
        except ScheduleError as exc:
            raise CommandError(str(exc)) from exc
        if schedules:
            names = ", ".join(f"{s.name} ({s.cron} {s.timezone})" for s in schedules)
            log.info("scheduler started with %d schedule(s): %s", len(schedules), names)
        else:
            log.warning("scheduler started with no schedules: PORTICO_SCHEDULES is empty")
        asyncio.run(self._serve(trigger))
        log.info("scheduler stopped: %d job(s) created, %d fire(s) left to another scheduler",
                 trigger.created, trigger.created_elsewhere)

    async def _serve(self, trigger: ScheduleTrigger) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await trigger.start()
        try:
            await stop.wait()
        finally:
            await trigger.stop()
