"""Kopf wiring: which cluster events reach the reconciler. No decisions are made here.

- a FineTuneJob's watch event -> its copy in the store (finetunejobs.py), and if the copy is newer than the one
  held (a new FineTuneJob, a spec edit, every one at startup) -> a pass, queued (workqueue.py); our own status
  PATCH's echo is not newer, so it queues nothing. Also the jobs-by-phase gauge and the poller's list of jobs
- one of its attempts' Jobs or pods changes -> not Kopf's: reflector.py's watches, started and stopped here with
  Kopf, keep the store of children (children.py), and if anything a pass reads changed (a pod starts, becomes
  ready, ends; a Job completes, fails, is suspended) queue its FineTuneJob for a pass (a second work queue, so new
  FineTuneJobs do not wait behind pod events); a failed pass of either queue is run again by the poller
- the poller (poller.py) reconciles running jobs and those with a deadline or TTL every poll interval, and reads
  running trainers' progress

Only watch handlers (``kopf.on.event``), no change handlers (on.create/update/resume): those need Kopf's record of
what it handled, an annotation PATCH on every FineTuneJob (one request per job, BENCHMARKS.md §5), and the passes
do not need it: a pass decides from what the cluster holds, not from which change arrived, and every FineTuneJob
is seen at startup by the watch's listing (what on.resume gave). So Kopf writes nothing to FineTuneJobs, and no
handler needs a finalizer: FineTuneJobs stay deletable while the operator is down or uninstalled.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from finetune_operator import logs, metrics
from finetune_operator.api import GROUP, PLURAL, VERSION
from finetune_operator.kube import CRD_NAME, EndlessBackoff, KubeError, Unavailable

log = logging.getLogger(__name__)

FINETUNEJOBS = (GROUP, VERSION, PLURAL)
# A reconcile that met an API failure is retried after this long.
RETRY_DELAY = 10
# How long a leader's start waits for the first LIST of its children before watching FineTuneJobs.
FIRST_LIST_SECONDS = 30


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
    try:
        if not memo.reconciler.kube.crd_installed():
            log.warning("The FineTuneJob CRD (%s) is not installed; waiting for it (install it with "
                        "`finetune crd | kubectl apply -f -` or the Helm chart)", CRD_NAME)
    except KubeError as error:
        log.warning("Cannot check for the FineTuneJob CRD (%s): %s", CRD_NAME, error)


async def start_polling(memo: kopf.Memo, **_: Any) -> None:
    memo.new_passes.start()
    memo.passes.start()
    memo.watches.start()
    # Kopf starts its FineTuneJob watch after this: the passes its listing queues then read the store, not one LIST
    # of their children each (2 requests per job on a leader's start). A LIST that fails is not waited for long.
    if not await asyncio.get_running_loop().run_in_executor(None, memo.watches.wait_listed, FIRST_LIST_SECONDS):
        log.warning("the trainer Jobs and pods are not listed yet; passes LIST their own until they are")
    memo.polling = asyncio.create_task(memo.poller.run(), name="finetune-poller")


async def stop_polling(memo: kopf.Memo, **_: Any) -> None:
    memo.polling.cancel()
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(None, stop) for stop in (memo.watches.stop, memo.new_passes.stop,
                                                                            memo.passes.stop)))


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
    kopf.on.startup(**on)(start_polling)
    kopf.on.cleanup(**on)(stop_polling)
    kopf.on.event(*FINETUNEJOBS, id="finetunejob-seen", **on)(finetunejob_seen)
