"""Logging of the operator process: our lines at the chosen level, Kopf's routine chatter kept out of the way.

Kopf logs every retry of every failed API request at ERROR, one line per watch stream per retry, and each job's
reconcile retry adds its own, so an API server restart fills the log with near-identical lines. ``OutageFilter``
turns them into one clear line per outage and a reminder a minute while it lasts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
UNAVAILABLE = "Kubernetes API unavailable"


class OutageFilter(logging.Filter):
    """Let through one "API unavailable" line, then at most one per ``every`` seconds; drop the rest."""

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.every, self.clock = every, clock
        self._last: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        kopf_retry = message.startswith("Request attempt") and "will retry" in message
        if not kopf_retry and UNAVAILABLE not in message:  # UNAVAILABLE: the reconciler's retries (handlers.py)
            return True
        now = self.clock()
        if self._last is not None and now - self._last < self.every:
            return False
        self._last = now
        cause = message.rsplit(" -> ", 1)[-1] if kopf_retry else message.split(UNAVAILABLE, 1)[-1].lstrip(": ,")
        record.msg, record.args = f"{UNAVAILABLE}, retrying with backoff: %s", (cause[:200],)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(OutageFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if logging.getLevelName(level) > logging.DEBUG:
        # "Handler 'x' succeeded" for every watch event and a line per liveness probe; failures still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The client retries a refused connection three times, each with a warning; the outage line says it all.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
