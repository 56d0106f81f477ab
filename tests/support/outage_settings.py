"""Settings for worker processes whose database goes away: the test settings plus the nap handler."""
from __future__ import annotations

from tests.support.settings import *  # noqa: F403
from tests.support.settings import PORTICO_HANDLERS

PORTICO_HANDLERS = [*PORTICO_HANDLERS, "tests.support.outage.NapHandler"]
