"""Kopf wiring: which cluster events reach the reconciler. No decisions are made here.

- a FineTuneJob is created, changed, or found at startup -> reconcile (Kopf retries it with backoff on failure)
- one of its attempts' Jobs changes (pods start, finish, fail) -> reconcile its FineTuneJob
- every watch event of a FineTuneJob -> the jobs-by-phase gauge and the poller's list of active jobs
- the poller (poller.py) reconciles active jobs every poll interval and reads their trainers' progress

Kopf's own bookkeeping lives in ``finetune.io/*`` annotations, never in ``status``, which the reconciler owns;
no handler needs a finalizer, so FineTuneJobs stay deletable while the operator is down or uninstalled.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import kopf

from finetune_operator import logs, metrics
from finetune_operator.api import GROUP, PLURAL, VERSION
from finetune_operator.kube import CRD_NAME, KubeError, Unavailable
from finetune_operator.render import LABEL_JOB, MANAGED_BY

log = logging.getLogger(__name__)

FINETUNEJOBS = (GROUP, VERSION, PLURAL)
STORAGE_PREFIX = "finetune.io"
# A reconcile that met an API failure is retried after this long.
RETRY_DELAY = 10


class EndlessBackoff:
    """Delays between retries of a failed API request: growing, then every 30 s for as long as it takes."""

    def __iter__(self) -> Iterator[float]:
        yield from (1, 2, 4, 8, 15)
        yield from itertools.repeat(30)


def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    return memo.reconciler.kube.connection_info()


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=STORAGE_PREFIX)
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
    memo.polling = asyncio.create_task(memo.poller.run(), name="finetune-poller")


async def stop_polling(memo: kopf.Memo, **_: Any) -> None:
    memo.polling.cancel()


def _reconcile(memo: kopf.Memo, namespace: str, name: str) -> None:
    try:
        memo.reconciler.reconcile(namespace, name)
    except Unavailable as error:
        raise kopf.TemporaryError(f"{logs.UNAVAILABLE}: {error}", delay=RETRY_DELAY) from None
    except KubeError as error:  # e.g. 403: RBAC narrower than the chart's; retried in case it gets fixed
        raise kopf.TemporaryError(f"Kubernetes API refused a request: {error}", delay=6 * RETRY_DELAY) from None


def finetunejob_changed(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    _reconcile(memo, namespace, name)


def attempt_changed(labels: dict[str, str], namespace: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        _reconcile(memo, namespace, labels[LABEL_JOB])
    except kopf.TemporaryError as error:
        # Watch events are not retried; the poller catches up on its next round.
        log.warning("%s/%s: %s", namespace, labels[LABEL_JOB], error)


def finetunejob_seen(type: str, name: str, namespace: str, spec: dict[str, Any], status: dict[str, Any],
                     memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        metrics.JOBS.forget(f"{namespace}/{name}")
        memo.poller.forget(namespace, name)
        memo.reconciler.forget(namespace, name)
    else:
        metrics.JOBS.observe(f"{namespace}/{name}", status.get("phase"))
        memo.poller.track(namespace, name, spec, status)


def register(registry: kopf.OperatorRegistry) -> None:
    on = {"registry": registry}
    kopf.on.login(**on)(login)
    kopf.on.startup(**on)(configure)
    kopf.on.startup(**on)(start_polling)
    kopf.on.cleanup(**on)(stop_polling)
    kopf.on.create(*FINETUNEJOBS, id="reconcile-created", **on)(finetunejob_changed)
    kopf.on.resume(*FINETUNEJOBS, id="reconcile-resumed", **on)(finetunejob_changed)
    kopf.on.update(*FINETUNEJOBS, id="reconcile-updated", **on)(finetunejob_changed)
    kopf.on.event(*FINETUNEJOBS, id="finetunejob-seen", **on)(finetunejob_seen)
    kopf.on.event("batch", "v1", "jobs", id="attempt-changed",
                  labels={"app.kubernetes.io/managed-by": MANAGED_BY, LABEL_JOB: kopf.PRESENT}, **on)(attempt_changed)
