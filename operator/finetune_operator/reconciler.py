"""One pass over one FineTuneJob: gather what is observed, let the lifecycle decide, act, write the status.

Every trigger (the FineTuneJob changed, one of its Jobs or pods changed, the poll timer) runs the same pass, so
the outcome depends only on what the cluster holds, never on which event arrived or whether an earlier pass was
cut short: a pass killed after creating a Job finds that Job next time (deterministic names) and carries on.

The FineTuneJob comes from the watch-fed copy (finetunejobs.py), not from a GET, and the children (Jobs, pods)
from the watch-fed store (children.py), not from LISTs; where the store may be behind in a way the decision
depends on, the pass LISTs once (``_children``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone

from finetune_operator import metrics
from finetune_operator.api import Phase
from finetune_operator.children import Children, behind
from finetune_operator.events import NOTIFICATION_FAILED, build_event, transition_event, transition_notice
from finetune_operator.finetunejobs import FineTuneJobs
from finetune_operator.kube import Conflict, Invalid, Kube, NotFound, merge_patch
from finetune_operator.lifecycle import (INVALID_SPEC, TERMINAL, CreateAttempt, Decision, DeleteFineTuneJob,
                                         ResumeAttempt, SuspendAttempt, decide)
from finetune_operator.names import attempt_name
from finetune_operator.notify.notice import Notice, build_notice
from finetune_operator.notify.routing import Notifications
from finetune_operator.notify.sinks import Sink
from finetune_operator.observed import Observed, Policy, attempt_number, observe
from finetune_operator.pricing import parse_prices
from finetune_operator.render import build_attempt
from finetune_operator.scrape import Scraper
from finetune_operator.settings import Settings
from finetune_operator.status import next_status
from finetune_operator.usage import usage_due

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Reconciler:
    def __init__(self, kube: Kube, settings: Settings, scraper: Scraper, children: Children | None = None,
                 clock: Callable[[], datetime] = utc_now, finetunejobs: FineTuneJobs | None = None,
                 write_later: Callable[[tuple[str, str]], None] | None = None):
        self.kube, self.settings, self.scraper, self.clock = kube, settings, scraper, clock
        # Where a new job's first status write goes (the runner's child-event queue), see _pass_over; None: at once.
        self.write_later = write_later
        self.policy = Policy(stalled_after_seconds=settings.stalled_after_seconds or None,
                             gpu_resource=settings.gpu_resource, prices=parse_prices(settings.prices))
        self.host = socket.gethostname()  # the Events' source
        # A store never synced answers nothing: every pass LISTs, as before there was one.
        self.children = children if children is not None else Children()
        # Filled by the FineTuneJob watch (handlers.py) and by the passes' own GETs and PATCH answers.
        self.finetunejobs = finetunejobs if finetunejobs is not None else FineTuneJobs()
        self.notifications = Notifications.from_settings(settings, self.notification_failed)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, key: str) -> threading.Lock:
        # Triggers of one job arrive on different Kopf workers; one pass at a time per job keeps Events single.
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is kept in memory about a deleted FineTuneJob (its copy goes with its DELETED event)."""
        key = f"{namespace}/{name}"
        with self._locks_guard:
            self._locks.pop(key, None)
        self.scraper.forget(key)

    def reconcile(self, namespace: str, name: str, poll: bool = False) -> Decision | None:
        """Bring one FineTuneJob a step closer to its spec; ``poll`` also reads the trainer's progress."""
        started = time.monotonic()
        metrics.namespace_seen(namespace)
        try:
            with self._lock(f"{namespace}/{name}"):
                decision = self._pass(namespace, name, poll)
        except Exception:
            metrics.RECONCILES.labels(namespace, "error").inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        metrics.RECONCILES.labels(namespace, "success").inc()
        return decision

    def _pass(self, namespace: str, name: str, poll: bool) -> Decision | None:
        # The copy the watch and our own PATCH answers keep (finetunejobs.py), not a GET: its status PATCH carries
        # the copy's resourceVersion, so a copy that lags is refused (Conflict) rather than dropping a change, and
        # only then, or when nothing is held (a GET answer that lost a race with a deletion), the pass GETs.
        ftj = self.finetunejobs.get(namespace, name)
        if ftj is not None:
            try:
                return self._pass_over(ftj, poll)
            except Conflict:
                log.debug("%s/%s: the FineTuneJob changed since the copy held; reading it again", namespace, name)
        ftj = self.kube.get_finetunejob(namespace, name)
        if ftj is None:
            self.finetunejobs.forget(namespace, name)
            return None
        self.finetunejobs.put(ftj)
        return self._pass_over(ftj, poll)

    def _pass_over(self, ftj: dict, poll: bool) -> Decision | None:
        namespace, name = ftj["metadata"]["namespace"], ftj["metadata"]["name"]
        if ftj["metadata"].get("deletionTimestamp"):
            return None  # deleted: garbage collection removes the children
        jobs, pods = self._children(ftj)
        now = self.clock()
        observed = replace(observe(ftj, jobs, pods, now, workloads=self._workloads(ftj, jobs)), policy=self.policy)
        if poll:
            observed = replace(observed, scraped=self._scrape(observed))
        decision = decide(observed)
        try:
            created = self._act(observed, decision)
        except Invalid as error:
            # The schema admitted a spec the apiserver will not accept in a child (e.g. a PVC name that is not a
            # DNS name): no retry can help, so the job fails with the apiserver's own words.
            decision, created = Decision(Phase.FAILED, INVALID_SPEC,
                                         f"the API server refused the trainer Job: {error}"), False
        if isinstance(decision.action, DeleteFineTuneJob):
            return decision
        if created and self.write_later is not None and not observed.status.phase:
            # A new job's first pass makes its Job and writes nothing else, so apply -> Job costs one request, as at
            # the floor (BENCHMARKS.md §5). Its status, and the notice of its first phase, are the next pass's: queued
            # behind the other new jobs' creations (workqueue.py), it writes what the pods did meanwhile too, and the
            # lifecycle says for the attempt the status does not record yet what this pass would have said.
            self.write_later((namespace, name))
            return decision
        status = next_status(observed, decision)
        patch = merge_patch(ftj.get("status") or {}, status)
        written = (ftj.get("status") or {}).get("usage")
        if set(patch) == {"usage"} and not (poll and usage_due(written, status.get("usage"))):
            # Only the clock moved it (a running pod's seconds, wallSeconds): written by the polls, at most every
            # USAGE_WRITE_SECONDS, and with every other change, not by each watch event's pass (BENCHMARKS.md §5).
            # The sums are recomputed from the pods and never shrink (usage.py), so writing them later loses nothing.
            patch = {}
        if patch:
            try:
                self.finetunejobs.put(self.kube.patch_status(namespace, name, patch,
                                                             ftj["metadata"].get("resourceVersion")))
            except NotFound:
                self.finetunejobs.forget(namespace, name)
                return None  # deleted while we looked at it
            metrics.count_usage(namespace, written, status.get("usage"))
        event = transition_event(observed, decision)
        notice = transition_notice(observed, decision, event)
        if notice:
            log.info("%s/%s: %s (%s): %s", namespace, name, decision.phase.value, decision.reason, decision.message)
            # Queued before the Event is posted: a failed POST fails the pass, and the next pass sees no transition.
            self.notifications.transition(ftj, build_notice(ftj, status, notice, now))
        if event:
            self.kube.post_event(build_event(ftj, *event, now=now, host=self.host))
        return decision

    def notification_failed(self, notice: Notice, sink: Sink, tries: int, error: str) -> None:
        """A Warning Event on the FineTuneJob: a sink did not get one of its notices (called by the Notifier)."""
        ftj = {"metadata": {"name": notice.name, "namespace": notice.namespace, "uid": notice.uid,
                            "resourceVersion": notice.resource_version}}
        message = (f"the notification of {notice.phase} ({notice.reason}) to {sink.display} was given up after "
                   f"{tries} tries: {error} (id {notice.id})")
        self.kube.post_event(build_event(ftj, "Warning", NOTIFICATION_FAILED, message, now=self.clock(),
                                         host=self.host))

    def _children(self, ftj: dict) -> tuple[list[dict], list[dict]]:
        namespace, name = ftj["metadata"]["namespace"], ftj["metadata"]["name"]
        stored = self.children.get(namespace, name)
        if stored is not None:
            why = behind(ftj.get("status") or {}, *stored)
            if why is None:
                return stored
            log.debug("%s/%s: listing its children: %s", namespace, name, why)
        # Not synced yet (startup), or behind where the decision depends on it: one consistent read, which the store
        # keeps where it is newer than what it holds, so the next pass need not ask again.
        jobs, pods = self.kube.list_children(namespace, name)
        self.children.seed(jobs, pods)
        return jobs, pods

    def _workloads(self, ftj: dict, jobs: list[dict]) -> list[dict]:
        """Kueue's Workload for the current attempt's Job while Kueue holds that Job suspended (queued, or preempted):
        why it waits is there, not on the Job (kueue.py). One LIST by label, only for such a job."""
        if not (ftj.get("spec") or {}).get("queueName") or (ftj.get("status") or {}).get("phase") in TERMINAL:
            return []
        current = max(jobs, key=attempt_number, default=None)
        if current is None or not (current.get("spec") or {}).get("suspend"):
            return []
        uid = (current.get("metadata") or {}).get("uid")
        return self.kube.list_workloads(ftj["metadata"]["namespace"], uid) if uid else []

    def _scrape(self, o: Observed) -> dict | None:
        rank0 = o.current.rank0 if o.current else None
        if rank0 is None or rank0.phase != "Running" or not rank0.ip:
            return None
        return self.scraper.read(f"{o.namespace}/{o.name}", rank0.ip)

    def _act(self, o: Observed, d: Decision) -> bool:
        """Carry out the decision's action; True when it created a Job that did not exist."""
        action = d.action
        if isinstance(action, CreateAttempt):
            # Safe on a store that lags (a Job created by an earlier pass whose event has not arrived): names are
            # deterministic and create_if_absent takes "already exists" for success, so nothing is made twice.
            objects = build_attempt(o.ftj, action.number, self.settings, suspend=action.suspend,
                                    active_deadline_seconds=action.active_deadline_seconds)
            made = False
            for obj in objects:
                created = self.kube.create_if_absent(obj)
                if created is not None and obj["kind"] == "Job":
                    # The next pass sees the new Job even before its watch event arrives (no LIST for it).
                    self.children.seed([created], [])
                    made = True
                    metrics.ATTEMPTS.labels(o.namespace).inc()
                    if action.number > 1:
                        metrics.RETRIES.labels(o.namespace).inc()
            return made
        elif isinstance(action, (SuspendAttempt, ResumeAttempt)):
            self.kube.set_job_suspend(o.namespace, attempt_name(o.name, action.number),
                                      isinstance(action, SuspendAttempt))
        elif isinstance(action, DeleteFineTuneJob):
            log.info("%s/%s: deleting, spec.runPolicy.ttlSecondsAfterFinished has passed", o.namespace, o.name)
            self.kube.delete_finetunejob(o.namespace, o.name)
        return False
