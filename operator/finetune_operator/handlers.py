"""Kopf wiring: which cluster events reach the reconciler. No decisions are made here.

- a FineTuneJob's watch event -> its copy in the store (finetunejobs.py), and if the copy is newer than the one
  held (a new FineTuneJob, a spec edit, every one at startup) -> a pass, queued (workqueue.py); our own status
  PATCH's echo is not newer, so it queues nothing. Also the jobs-by-phase gauge and the poller's list of jobs
- one of its attempts' Jobs or pods changes -> the store of children (children.py) keeps it, and if anything a
  pass reads changed (a pod starts, becomes ready, ends; a Job completes, fails, is suspended) -> its FineTuneJob
  is queued for a pass (a second work queue, so new FineTuneJobs do not wait behind pod events); a failed pass of
  either queue is run again by the poller
- the poller (poller.py) reconciles running jobs and those with a deadline or TTL every poll interval, and reads
  running trainers' progress
- at startup, and after Kopf re-listed the Jobs or pods (a watch restarted), the store is synced from a LIST

Only watch handlers (``kopf.on.event``), no change handlers (on.create/update/resume): those need Kopf's record of
what it handled, an annotation PATCH on every FineTuneJob (one request per job, BENCHMARKS.md §5), and the passes
do not need it: a pass decides from what the cluster holds, not from which change arrived, and every FineTuneJob
is seen at startup by the watch's listing (what on.resume gave). So Kopf writes nothing to FineTuneJobs, and no
handler needs a finalizer: FineTuneJobs stay deletable while the operator is down or uninstalled.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import kopf

from finetune_operator import children as children_store
from finetune_operator import logs, metrics
from finetune_operator.api import GROUP, PLURAL, VERSION
from finetune_operator.kube import CRD_NAME, KubeError, Unavailable
from finetune_operator.names import CHILD_SELECTOR

log = logging.getLogger(__name__)

FINETUNEJOBS = (GROUP, VERSION, PLURAL)
JOBS = ("batch", "v1", "jobs")
PODS = ("v1", "pods")
# A reconcile that met an API failure is retried after this long.
RETRY_DELAY = 10


class EndlessBackoff:
    """Delays between retries of a failed API request: growing, then every 30 s for as long as it takes."""

    def __iter__(self) -> Iterator[float]:
        yield from (1, 2, 4, 8, 15)
        yield from itertools.repeat(30)


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf's record of each object's last handled state, for change handlers; there are none, so it is neither
    built nor kept. Kopf would otherwise deep-copy every object's body on every watch event (10 % of the
    operator's samples at 500 jobs, BENCHMARKS.md §5)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        pass


def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    return memo.reconciler.kube.connection_info()


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.diffbase_storage = NoDiffBase()
    # Events come from the reconciler, one per transition, with the lifecycle's reasons.
    settings.posting.enabled = False
    # Endless retries: an API outage longer than Kopf's default ~1 minute must not stop the watches.
    settings.networking.error_backoffs = EndlessBackoff()
    # Only our children reach the operator: the API server filters the Jobs and pods watches by label. (The
    # handlers below need no label filter of their own, and so also see a child that lost its label leave.)
    settings.watching.label_selectors[JOBS] = CHILD_SELECTOR
    settings.watching.label_selectors[PODS] = CHILD_SELECTOR
    try:
        if not memo.reconciler.kube.crd_installed():
            log.warning("The FineTuneJob CRD (%s) is not installed; waiting for it (install it with "
                        "`finetune crd | kubectl apply -f -` or the Helm chart)", CRD_NAME)
    except KubeError as error:
        log.warning("Cannot check for the FineTuneJob CRD (%s): %s", CRD_NAME, error)


def _list_all_children(memo: kopf.Memo) -> Callable[[], tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    kube, namespaces = memo.reconciler.kube, memo.reconciler.settings.namespaces
    return lambda: kube.list_all_children(namespaces)


def sync_children(memo: kopf.Memo, **_: Any) -> None:
    """Fill the store of children before the watches start, so the passes at startup need no LISTs."""
    try:
        children_store.sync(memo.children, _list_all_children(memo))
    except KubeError as error:  # keep_synced tries again; until then every pass LISTs its children
        log.warning("Cannot list the trainer Jobs and pods yet: %s", error)


async def start_polling(memo: kopf.Memo, **_: Any) -> None:
    memo.new_passes.start()
    memo.passes.start()
    memo.polling = asyncio.create_task(memo.poller.run(), name="finetune-poller")
    memo.syncing = asyncio.create_task(children_store.keep_synced(memo.children, _list_all_children(memo)),
                                       name="finetune-children-sync")


async def stop_polling(memo: kopf.Memo, **_: Any) -> None:
    memo.polling.cancel()
    memo.syncing.cancel()
    await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(None, queue.stop)
                           for queue in (memo.new_passes, memo.passes)))


def _reconcile(memo: kopf.Memo, namespace: str, name: str) -> None:
    try:
        memo.reconciler.reconcile(namespace, name)
    except Unavailable as error:
        raise kopf.TemporaryError(f"{logs.UNAVAILABLE}: {error}", delay=RETRY_DELAY) from None
    except KubeError as error:  # e.g. 403: RBAC narrower than the chart's; retried in case it gets fixed
        raise kopf.TemporaryError(f"Kubernetes API refused a request: {error}", delay=6 * RETRY_DELAY) from None


def event_pass(memo: kopf.Memo, namespace: str, name: str) -> None:
    """A pass queued by watch events (memo.passes and memo.new_passes run it)."""
    try:
        _reconcile(memo, namespace, name)
    except kopf.TemporaryError as error:
        # Watch events are not retried, and the job may be one the poller does not poll: it runs this pass again.
        memo.poller.retry(namespace, name)
        log.warning("%s/%s: %s", namespace, name, error)


def _child_changed(memo: kopf.Memo, kind: str, type_: str | None, body: kopf.Body) -> None:
    owner = memo.children.apply(kind, type_, body)
    if owner is not None:  # else nothing a pass reads has changed (most Job status updates, pod timestamps)
        memo.passes.add(owner)


# Async, so they run on Kopf's event loop: storing a trimmed copy and queueing a key take microseconds, and the
# event's full body is let go at once instead of waiting in the thread pool's queue.
async def attempt_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _child_changed(memo, children_store.JOB, type, body)


async def pod_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _child_changed(memo, children_store.POD, type, body)


# Async (on the event loop, no I/O): storing a copy and queueing a key take microseconds, and every status patch
# comes back as an event of its FineTuneJob, which as a sync handler took a turn in Kopf's thread pool.
async def finetunejob_seen(type: str | None, body: kopf.Body, name: str, namespace: str, spec: dict[str, Any],
                           status: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        memo.reconciler.finetunejobs.remove(body)
        metrics.FINETUNEJOBS.forget(f"{namespace}/{name}")
        memo.poller.forget(namespace, name)
        memo.reconciler.forget(namespace, name)
        return
    metrics.FINETUNEJOBS.observe(f"{namespace}/{name}", status.get("phase"))
    memo.poller.track(namespace, name, spec, status)
    if memo.reconciler.finetunejobs.put(dict(body)):
        memo.new_passes.add((namespace, name))


def register(registry: kopf.OperatorRegistry) -> None:
    on = {"registry": registry}
    kopf.on.login(**on)(login)
    kopf.on.startup(**on)(configure)
    kopf.on.startup(**on)(sync_children)
    kopf.on.startup(**on)(start_polling)
    kopf.on.cleanup(**on)(stop_polling)
    kopf.on.event(*FINETUNEJOBS, id="finetunejob-seen", **on)(finetunejob_seen)
    # No labels= filter: the watches are filtered by the API server (configure), and a filter here would hide the
    # DELETED event of a child whose label was removed. children.apply ignores objects without the label.
    kopf.on.event(*JOBS, id="attempt-changed", **on)(attempt_changed)
    kopf.on.event(*PODS, id="pod-changed", **on)(pod_changed)
