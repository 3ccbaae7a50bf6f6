"""The operator's notifications as its settings configure them: which sinks a FineTuneJob's notices go to, and the
Notifier that delivers them (built once, at the reconciler's start)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_operator.notify.delivery import GiveUp, Notifier, Policy
from finetune_operator.notify.notice import Notice
from finetune_operator.notify.sinks import Sink, cluster_sinks, job_sinks, read_key
from finetune_operator.settings import Settings


@dataclass(frozen=True)
class Routing:
    cluster: tuple[Sink, ...] = ()
    job_sinks: bool = True  # spec.notify honoured

    def sinks_for(self, ftj: dict[str, Any]) -> tuple[Sink, ...]:
        return self.cluster + (job_sinks(ftj) if self.job_sinks else ())


class Notifications:
    """What the reconciler calls for a transition: route the notice and queue it (no I/O)."""

    def __init__(self, routing: Routing, notifier: Notifier):
        self.routing, self.notifier = routing, notifier

    @classmethod
    def from_settings(cls, settings: Settings, on_give_up: GiveUp) -> Notifications:
        policy = Policy(queue_size=settings.notify_queue_size, max_tries=settings.notify_max_tries,
                        first_backoff=settings.notify_first_backoff, timeout=settings.notify_timeout)
        routing = Routing(cluster_sinks(settings.notify_sinks), settings.notify_job_sinks)
        return cls(routing, Notifier(policy, read_key(settings.notify_signing_key_file), on_give_up))

    def transition(self, ftj: dict[str, Any], notice: Notice) -> None:
        sinks = self.routing.sinks_for(ftj)
        if sinks:
            self.notifier.submit(notice, sinks)

    def stop(self) -> None:
        self.notifier.stop()
