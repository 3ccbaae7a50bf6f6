"""Which sinks a FineTuneJob's notices go to, and the signing key, from the operator's settings.

The cluster admin's sinks (chart ``notifications.sinks``, passed as JSON in ``FINETUNE_NOTIFY_SINKS``) get every
job's notices; a job's own ``spec.notify.sinks`` get that job's, unless the admin turned them off
(``notifications.jobSinks: false``: the operator then POSTs only to addresses the admin chose). The key is read
from a file the chart mounts from a Secret: the operator has no RBAC to read Secrets, so a job cannot name one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from finetune_operator.api import NotifySink

CLUSTER, JOB = "cluster", "job"
_SINK_LIST = TypeAdapter(list[NotifySink])


@dataclass(frozen=True)
class Sink:
    url: str
    format: str
    origin: str  # CLUSTER or JOB

    @property
    def display(self) -> str:
        """The sink without path or query, which may hold a token (Slack's webhook URLs do): for logs and Events."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''} ({self.format})"


class SinkConfigError(ValueError):
    pass


def cluster_sinks(raw: str, setting: str = "FINETUNE_NOTIFY_SINKS") -> tuple[Sink, ...]:
    """The admin's sinks from their JSON list; a bad entry is an error naming the setting and the entry."""
    if not raw.strip():
        return ()
    try:
        sinks = _SINK_LIST.validate_python(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as error:
        raise SinkConfigError(f"{setting}: a JSON list of {{url: http(s)://..., format: cloudevents|slack}} "
                              f"is expected: {error}") from None
    return tuple(Sink(s.url, s.format, CLUSTER) for s in sinks)


def job_sinks(ftj: dict[str, Any]) -> tuple[Sink, ...]:
    """The sinks of ``spec.notify`` (the CRD's schema checked them at apply)."""
    entries = ((ftj.get("spec") or {}).get("notify") or {}).get("sinks") or []
    return tuple(Sink(e["url"], e.get("format", "cloudevents"), JOB) for e in entries)


def read_key(path: str) -> bytes | None:
    """The HMAC key from the mounted Secret's file (trailing newline dropped); None when unset."""
    if not path:
        return None
    key = Path(path).read_bytes().rstrip(b"\r\n")
    if not key:
        raise SinkConfigError(f"FINETUNE_NOTIFY_SIGNING_KEY_FILE: {path} is empty")
    return key
