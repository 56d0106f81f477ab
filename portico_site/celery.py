"""The Celery application, configured from the CELERY_* Django settings."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portico_site.settings")

app = Celery("portico_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
