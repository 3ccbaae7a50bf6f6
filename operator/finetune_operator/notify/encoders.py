"""A Notice as the bytes a sink receives: a CloudEvent, or a Slack-compatible webhook message.

CloudEvents use the HTTP binding's structured mode (the ``cloudevents`` package): the whole event, attributes
and ``data``, is the JSON body (``Content-Type: application/cloudevents+json``), so the signature covers the
event's id and time too, and the body can be stored or forwarded as one document. Slack's incoming webhooks
(and the Mattermost/Rocket.Chat ones that copy them) take ``text`` plus optional ``blocks``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from cloudevents.core.bindings import http
from cloudevents.core.v1.event import CloudEvent

from finetune_operator.api import NotifyFormat, parse_time
from finetune_operator.notify.notice import Notice

EVENT_TYPE = "io.finetune.finetunejob.transition"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_EMOJI = {"Succeeded": ":white_check_mark:", "Failed": ":x:", "Suspended": ":double_vertical_bar:",
          "Running": ":arrow_forward:", "Pending": ":hourglass:"}


@dataclass(frozen=True)
class Encoded:
    headers: dict[str, str]
    body: bytes


def cloudevent(notice: Notice) -> Encoded:
    event = CloudEvent(attributes={
        "id": notice.id, "source": notice.source, "type": EVENT_TYPE, "subject": f"{notice.namespace}/{notice.name}",
        "time": parse_time(notice.time), "datacontenttype": "application/json",
    }, data=notice.payload())
    message = http.to_structured_event(event)
    return Encoded({**message.headers, IDEMPOTENCY_HEADER: notice.id}, message.body)


def slack(notice: Notice) -> Encoded:
    emoji = ":warning:" if notice.severity == "Warning" and notice.phase != "Failed" else _EMOJI.get(notice.phase, "")
    title = f"{emoji} FineTuneJob *{notice.namespace}/{notice.name}* is {notice.phase} ({notice.reason})".strip()
    fields = [f"*{key}*\n{value:.4g}" for key, value in notice.metrics.items()]
    fields += [f"*{key}*\n`{location}`" for key, location in notice.outputs.items()]
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": f"{title}\n{notice.message}"}}]
    if fields:  # Slack allows 10 fields in a section
        blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields[:10]]})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": (
        f"attempt {notice.attempt or '-'} · uid {notice.uid} · {notice.time}")}]})
    body = {"text": f"{title}: {notice.message}", "blocks": blocks}
    return Encoded({"content-type": "application/json", IDEMPOTENCY_HEADER: notice.id}, json.dumps(body).encode())


ENCODERS: dict[str, Callable[[Notice], Encoded]] = {
    NotifyFormat.CLOUDEVENTS.value: cloudevent,
    NotifyFormat.SLACK.value: slack,
}
