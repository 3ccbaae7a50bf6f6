"""Leader election on a coordination.k8s.io/v1 Lease, so that the chart can run two replicas and only one acts.

The Kubernetes controllers' algorithm (client-go's leaderelection), written on kube.py rather than taken from a
library: the kubernetes client's `leaderelection` package talks through its own global configuration (not the
operator's Kube, identity and connection pool), reads the wall clock, and never gives the Lease back on shutdown.
Kopf's peering is no substitute (docs/cluster.md, "High availability", says why).

- A candidate reads the Lease every retry period. It takes it when there is none, when the holder released it
  (holderIdentity ""), or when the holder's term ran out: ``leaseDurationSeconds`` after the moment *this
  candidate* first saw the Lease as it is now, on its own monotonic clock, so clocks that disagree between nodes
  do not matter. Writes carry the resourceVersion read, so of two candidates only one wins.
- The leader renews every retry period, each write counted from the moment it was sent. If ``renew_deadline``
  passes without a renewal, or the Lease names someone else, ``lost`` is called: it must stop all work at once
  (the runner exits the process; crash-only). renew_deadline < lease duration leaves the difference for the exit,
  so two leaders never write at the same time.
- A leader that stops cleanly (SIGTERM) releases the Lease: the standby takes over at its next read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from finetune_operator.kube import LEASE_API, REQUEST_TIMEOUT, Conflict, Kube, KubeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """Seconds (settings.py has the defaults). A takeover after a crash takes lease_duration - retry_period to
    lease_duration + retry_period: the holder renewed at most a retry period before it died, and a standby reads
    the Lease every retry period."""

    lease_duration: int  # whole seconds: the Lease's leaseDurationSeconds
    renew_deadline: float
    retry_period: float

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(f"leader election needs lease duration ({self.lease_duration:g}) > renew deadline "
                             f"({self.renew_deadline:g}) > retry period ({self.retry_period:g}) > 0")


def micro_time(now: datetime | None = None) -> str:
    """A Lease's MicroTime (acquireTime, renewTime)."""
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claim(spec: dict[str, Any] | None, identity: str, expires_at: float, now: float, wall: str,
          duration: float) -> dict[str, Any] | None:
    """The Lease spec that makes ``identity`` the holder, or None while another holder's term runs.

    ``spec``: the Lease's spec as read (None: there is no Lease); ``expires_at``: when, on this candidate's clock,
    the holder's term ends (see Observer); ``now``: that clock now; ``wall``: the time to write (MicroTime).
    """
    spec = spec or {}
    holder = spec.get("holderIdentity") or ""
    if holder and holder != identity and now < expires_at:
        return None
    mine = holder == identity
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": int(duration),
        "acquireTime": spec["acquireTime"] if mine and spec.get("acquireTime") else wall,
        "renewTime": wall,
        # Counts changes of holder, as client-go does: a renewal is not one, taking a released Lease is.
        "leaseTransitions": spec.get("leaseTransitions", 0) + (0 if mine or not spec else 1),
    }


class Observer:
    """When the Lease last changed, on this candidate's clock: a holder's term ends its leaseDurationSeconds after
    that, however the holder's clock reads (client-go's observedTime)."""

    def __init__(self) -> None:
        self.spec: dict[str, Any] | None = None
        self.at = 0.0

    def see(self, spec: dict[str, Any], now: float) -> float:
        """Record ``spec`` as read at ``now``; returns when its holder's term ends."""
        if spec != self.spec:
            self.spec, self.at = spec, now
        return self.at + float(spec.get("leaseDurationSeconds") or 0)


class Elector:
    """One candidate for the Lease ``namespace/name``: `campaign` as a standby, then `keep_leading`, `release`."""

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, timing: Timing,
                 clock: Callable[[], float] = time.monotonic):
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.timing, self._clock = timing, clock
        self.holder = ""  # as last read: who leads, for the readiness answer and the log
        self.renewed_at: float | None = None  # when the last write that made this candidate the holder was sent
        self._lease: dict[str, Any] | None = None  # as this candidate last wrote it (a renewal needs no read)
        self._observer = Observer()
        self._stop = threading.Event()
        self._renewing: threading.Thread | None = None

    def try_lead(self, timeout: float = REQUEST_TIMEOUT[1]) -> bool:
        """One round: read the Lease (a holder renews what it wrote), take or renew it if it may; True if it holds."""
        sent = self._clock()
        try:
            lease = self._lease or self.kube.get_lease(self.namespace, self.name)
            if lease is None:
                written = self.kube.create_if_absent(self._new_lease())
            else:
                expires_at = self._observer.see(lease.get("spec") or {}, sent)
                holder = (lease.get("spec") or {}).get("holderIdentity") or ""
                if holder not in (self.holder, self.identity):
                    log.info("leader election: Lease %s/%s is held by %s", self.namespace, self.name,
                             holder or "nobody")
                self.holder = holder
                spec = claim(lease.get("spec"), self.identity, expires_at, sent, micro_time(),
                             self.timing.lease_duration)
                if spec is None:
                    return False
                written = self.kube.replace_lease({**lease, "spec": spec}, timeout)
        except Conflict:  # another candidate wrote first: read it again next round
            written = None
        except KubeError as error:
            log.warning("leader election: cannot read or write Lease %s/%s: %s", self.namespace, self.name, error)
            written = None
        if written is None:
            self._lease = None
            return False
        if self.holder != self.identity:
            log.info("leader election: %s now holds Lease %s/%s (was %r)", self.identity, self.namespace, self.name,
                     self.holder)
        self._lease, self.holder, self.renewed_at = written, self.identity, sent
        self._observer.see(written["spec"], sent)
        return True

    def _new_lease(self) -> dict[str, Any]:
        return {"apiVersion": LEASE_API, "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": claim(None, self.identity, 0, 0, micro_time(), self.timing.lease_duration)}

    def campaign(self, stop: threading.Event) -> bool:
        """Stand by until this candidate holds the Lease (True) or ``stop`` is set (False)."""
        log.info("leader election: %s stands by for Lease %s/%s", self.identity, self.namespace, self.name)
        while not stop.is_set():
            if self.try_lead():
                return True
            stop.wait(self.timing.retry_period)
        return False

    def keep_leading(self, lost: Callable[[str], None]) -> None:
        """Renew in a thread; ``lost(why)`` once the renew deadline passed or another holder took the Lease."""
        self._renewing = threading.Thread(target=self._renew, args=(lost,), name="lease-renewal", daemon=True)
        self._renewing.start()

    def _renew(self, lost: Callable[[str], None]) -> None:
        while not self._stop.wait(self.timing.retry_period):
            while True:
                remaining = self.renewed_at + self.timing.renew_deadline - self._clock()
                # Bounded by the deadline: a write that hangs must not keep this process acting past it.
                if remaining > 0 and self.try_lead(timeout=remaining):
                    break
                if self._stop.is_set():
                    return
                if self.holder not in ("", self.identity):
                    return lost(f"Lease {self.namespace}/{self.name} is held by {self.holder} now")
                if self._clock() >= self.renewed_at + self.timing.renew_deadline:
                    return lost(f"Lease {self.namespace}/{self.name} not renewed for "
                                f"{self.timing.renew_deadline:g}s (renew deadline)")
                self._stop.wait(min(self.timing.retry_period / 4, max(remaining, 0.01)))

    def release(self) -> None:
        """Stop renewing and give the Lease up (holder "", as client-go's ReleaseOnCancel), so a standby takes
        over at its next read instead of waiting out the term. Call it only once this process stopped acting."""
        self._stop.set()
        if self._renewing is not None:
            self._renewing.join()
        if self._lease is None:
            return
        spec = {**self._lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": micro_time()}
        try:
            self.kube.replace_lease({**self._lease, "spec": spec}, REQUEST_TIMEOUT[1])
            log.info("leader election: %s released Lease %s/%s", self.identity, self.namespace, self.name)
        except KubeError as error:  # taken or unreachable: the standby waits out the term instead
            log.warning("leader election: could not release Lease %s/%s: %s", self.namespace, self.name, error)
        self._lease = None
