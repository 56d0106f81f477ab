"""The Celery application, configured from the CELERY_* Django settings, and what beat runs."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portico_site.settings")

app = Celery("portico_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The app of every thread, not only the importing one: jobs are enqueued (and doorbells
# rung) from request threads and the job store's own threads too.
app.set_default()


# A worker that consumes Portico queues keeps a row in portico_worker while it runs (what
# /metrics counts as live workers). Both signals come only to a worker's main process.
@worker_ready.connect
def _register_worker(sender: Any = None, **_: Any) -> None:
    from jobs.presence import celery_worker_ready

    celery_worker_ready(sender)


@worker_shutdown.connect
def _unregister_worker(**_: Any) -> None:
    from jobs.presence import celery_worker_shutdown

    celery_worker_shutdown()


def beat_schedule() -> dict[str, dict[str, Any]]:
    """Every periodic task `celery -A portico_site beat` sends, keyed by entry name.

    Intervals come from the PORTICO_* settings. Each message expires after one interval:
    a sweep that waited that long behind busy workers has been superseded by the next.
    """
    from jobs import dispatch
    from jobs.conf import setting

    def every(task: str, seconds_setting: str) -> dict[str, Any]:
        seconds = float(setting(seconds_setting))
        return {"task": task, "schedule": seconds, "options": {"expires": seconds}}

    return {
        "portico-sweep": every(dispatch.SWEEP, "PORTICO_SWEEP_INTERVAL"),
        "portico-rescue": every(dispatch.RESCUE, "PORTICO_RESCUE_INTERVAL"),
        "portico-prune": every(dispatch.PRUNE, "PORTICO_PRUNE_INTERVAL"),
        "portico-compact-counters": every(dispatch.COMPACT_COUNTERS, "PORTICO_COMPACT_INTERVAL"),
        "portico-heal-failure-groups": every(dispatch.HEAL_FAILURE_GROUPS, "PORTICO_HEAL_INTERVAL"),
        "portico-record-samples": every(dispatch.RECORD_SAMPLES, "PORTICO_SAMPLE_INTERVAL"),
    }


# Read when the configuration is first needed (Django's settings are ready by then); a
# CELERY_BEAT_SCHEDULE setting, if a deployment defines one, replaces it.
app.add_defaults(lambda: {"beat_schedule": beat_schedule()})
