"""The operator's log (logs.py): an API outage is one clear line, then a reminder a minute."""

from __future__ import annotations

import logging

from finetune_operator.logs import OutageFilter


def _record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("kopf._cogs.clients.watching", level, __file__, 1, message, None, None)


def test_an_outage_is_one_clear_line_then_a_reminder_a_minute():
    clock = [0.0]
    outage = OutageFilter(every=60, clock=lambda: clock[0])
    retry = "Request attempt #1/9 failed; will retry: GET https://api/apis/x?watch=true -> ClientConnectorError(refused)"
    first = _record(retry)
    assert outage.filter(first)
    assert first.levelname == "WARNING"
    assert first.getMessage() == "Kubernetes API unavailable, retrying with backoff: ClientConnectorError(refused)"
    clock[0] = 5
    assert not outage.filter(_record(retry))
    assert not outage.filter(_record("Timer 'poll' failed temporarily: Kubernetes API unavailable: 0 refused"))
    assert outage.filter(_record("Handler 'x' failed with an exception."))  # other lines pass untouched
    clock[0] = 70
    assert outage.filter(_record(retry))
