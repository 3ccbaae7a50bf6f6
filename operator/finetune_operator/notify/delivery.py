"""Delivery of notices to sinks, off the reconcile path: a bounded queue and a worker thread per sink.

``Notifier.submit`` only appends to the sinks' queues (under one lock, no I/O), so a reconcile pass never waits
on a sink. Each sink has its own queue and thread, so a sink that hangs holds up only its own notices; its thread
exists while it has work and ends when the queue is empty. Per sink, notices go out in order, one at a time:

- a 2xx is delivered; a network error, timeout, 408, 429 or 5xx is retried after 1, 2, 4, ... seconds (capped)
  up to ``max_tries``; any other 4xx cannot get better by retrying. Either way, giving up calls ``on_give_up``
  (the reconciler posts a NotificationFailed Event) and counts ``result="failed"``.
- the queue is bounded: when a dead sink's backlog is full the oldest waiting notice is dropped and counted
  (``result="dropped"``), so memory stays bounded however long a sink is down; so is the number of sinks with
  work at once (``max_sinks``, a thread each), which jobs' own sinks could otherwise grow.
- at least once: a notice is retried until a 2xx or the bound, with the same ``Idempotency-Key``/CloudEvent id
  each time; receivers drop duplicates by it. Queues are in memory, so what waits when the operator stops is lost.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from finetune_operator import metrics
from finetune_operator.notify.encoders import ENCODERS, Encoded
from finetune_operator.notify.notice import Notice
from finetune_operator.notify.signing import SIGNATURE_HEADER, signature
from finetune_operator.notify.sinks import Sink

log = logging.getLogger(__name__)

USER_AGENT = "finetune-operator-notifier"
RETRYABLE_STATUS = frozenset({408, 429})


@dataclass(frozen=True)
class Policy:
    queue_size: int = 1000  # waiting notices per sink
    max_tries: int = 8  # tries per notice, the first included
    first_backoff: float = 1.0  # seconds before the second try; doubles per try
    max_backoff: float = 60.0
    timeout: float = 5.0  # seconds for one HTTP request, connecting included
    max_sinks: int = 256  # sinks with work at once (a thread each); a notice for one more is dropped

    def backoff(self, tries: int) -> float:
        return min(self.max_backoff, self.first_backoff * 2 ** (tries - 1))


class DeliveryError(Exception):
    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def http_post(url: str, encoded: Encoded, timeout: float) -> None:
    """POST ``encoded``; raises DeliveryError unless the answer is a 2xx."""
    request = urllib.request.Request(url, data=encoded.body, method="POST",
                                     headers={"User-Agent": USER_AGENT, **encoded.headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(1024)
    except urllib.error.HTTPError as error:
        retryable = error.code >= 500 or error.code in RETRYABLE_STATUS
        raise DeliveryError(f"HTTP {error.code} {error.reason}", retryable) from None
    except (OSError, ValueError) as error:  # refused, reset, timed out, DNS; ValueError: a malformed answer
        raise DeliveryError(f"{type(error).__name__}: {error}", retryable=True) from None


@dataclass
class _Delivery:
    notice: Notice
    sink: Sink
    submitted: float = field(default_factory=time.monotonic)


GiveUp = Callable[[Notice, Sink, int, str], None]


class Notifier:
    def __init__(self, policy: Policy, key: bytes | None, on_give_up: GiveUp,
                 post: Callable[[str, Encoded, float], None] = http_post):
        self.policy, self.key, self.on_give_up, self.post = policy, key, on_give_up, post
        self._queues: dict[Sink, deque[_Delivery]] = {}  # a sink has a queue while its worker runs
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def submit(self, notice: Notice, sinks: tuple[Sink, ...]) -> None:
        """Queue ``notice`` for each sink; returns at once."""
        for sink in sinks:
            with self._lock:
                queue = self._queues.get(sink)
                if queue is None and len(self._queues) >= self.policy.max_sinks:
                    metrics.NOTIFICATIONS.labels(notice.namespace, "dropped").inc()
                    log.warning("%s: %d sinks are busy already, dropped notification %s of %s/%s", sink.display,
                                len(self._queues), notice.id, notice.namespace, notice.name)
                    continue
                if queue is None:
                    queue = self._queues[sink] = deque()
                    threading.Thread(target=self._work, args=(sink, queue), daemon=True,
                                     name=f"notify {sink.display}").start()
                if len(queue) >= self.policy.queue_size:
                    dropped = queue.popleft()
                    metrics.NOTIFICATIONS.labels(dropped.notice.namespace, "dropped").inc()
                    log.warning("%s: queue full, dropped notification %s of %s/%s", sink.display, dropped.notice.id,
                                dropped.notice.namespace, dropped.notice.name)
                else:
                    metrics.NOTIFICATIONS_QUEUED.inc()
                queue.append(_Delivery(notice, sink))

    def stop(self) -> None:
        """Workers end at their next wait; waiting notices are abandoned (the queues are in memory)."""
        self._stopping.set()

    def pending(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def _work(self, sink: Sink, queue: deque[_Delivery]) -> None:
        while not self._stopping.is_set():
            with self._lock:
                if not queue:
                    del self._queues[sink]
                    return
                delivery = queue.popleft()
                metrics.NOTIFICATIONS_QUEUED.dec()
            self._deliver(delivery)

    def _deliver(self, delivery: _Delivery) -> None:
        notice, sink, policy = delivery.notice, delivery.sink, self.policy
        encoded = ENCODERS[sink.format](notice)
        if self.key is not None:
            encoded = Encoded({**encoded.headers, SIGNATURE_HEADER: signature(self.key, encoded.body)}, encoded.body)
        tries = 0
        while True:
            tries += 1
            try:
                self.post(sink.url, encoded, policy.timeout)
            except DeliveryError as error:
                if not error.retryable or tries >= policy.max_tries:
                    self._give_up(delivery, tries, str(error))
                    return
                log.debug("%s: notification %s, try %d: %s", sink.display, notice.id, tries, error)
                metrics.NOTIFICATION_RETRIES.labels(notice.namespace).inc()
                if self._stopping.wait(policy.backoff(tries)):
                    return
                continue
            metrics.NOTIFICATIONS.labels(notice.namespace, "delivered").inc()
            metrics.NOTIFICATION_SECONDS.observe(time.monotonic() - delivery.submitted)
            return

    def _give_up(self, delivery: _Delivery, tries: int, error: str) -> None:
        notice, sink = delivery.notice, delivery.sink
        metrics.NOTIFICATIONS.labels(notice.namespace, "failed").inc()
        log.warning("%s/%s: notification %s to %s given up after %d tries: %s", notice.namespace, notice.name,
                    notice.id, sink.display, tries, error)
        try:
            self.on_give_up(notice, sink, tries, error)
        except Exception:  # noqa: BLE001 - the Event is best effort; the worker must go on with the next notice
            log.exception("cannot report the failed notification %s", notice.id)
