"""System checks of the jobs app (``manage.py check``; ``--deploy`` for the production ones).

Registered in JobsConfig.ready().
"""
from __future__ import annotations

from typing import Any

from django.core.checks import Warning

from jobs.conf import setting


def check_metrics_token(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    if setting("PORTICO_METRICS_TOKEN"):
        return []
    return [Warning(
        "PORTICO_METRICS_TOKEN is not set: /metrics answers anyone who can reach the site.",
        hint="Set PORTICO_METRICS_TOKEN to a long random string and give Prometheus the same "
             "value as its bearer token (authorization: credentials in the scrape config).",
        id="portico.W001",
    )]
