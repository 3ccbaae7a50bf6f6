"""The children's watches (reflector.py) against the real API server: LIST then WATCH with the operator's label
selector, a child's creation and deletion reach the store and queue its FineTuneJob, watches stopped and started
again (the runner restarts Kopf) go on from the last resourceVersion seen, and a stop ends a quiet watch at once.
(410 Gone cannot be provoked on demand here: the API server replays history from etcd until it compacts;
tests/operator/test_reflector.py covers it.)"""

from __future__ import annotations

import threading
import time

import pytest

from conftest import ControlPlane, wait_for
from finetune_operator.children import Children
from finetune_operator.kube import Kube
from finetune_operator.reflector import Reflectors

pytestmark = pytest.mark.cluster


def _job(namespace: str, owner: str, labelled: bool = True) -> dict:
    labels = {"app.kubernetes.io/managed-by": "finetune-operator", "finetune.io/job": owner,
              "finetune.io/attempt": "1"} if labelled else {"app": "someone-elses"}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"{owner}-a1", "namespace": namespace, "labels": labels},
            "spec": {"suspend": True, "template": {"metadata": {"labels": labels}, "spec": {
                "restartPolicy": "Never", "containers": [{"name": "trainer", "image": "busybox"}]}}}}


class CountingKube(Kube):
    lists = 0

    def list_collection(self, path, selector):
        self.lists += 1
        return super().list_collection(path, selector)


def test_the_watches_keep_the_store_and_queue_passes_against_the_real_api(control_plane: ControlPlane,
                                                                         namespace: str) -> None:
    control_plane.apply(_job(namespace, "before"))
    control_plane.apply(_job(namespace, "stranger", labelled=False))
    kube = CountingKube(Kube.connect(str(control_plane.kubeconfig)).api)
    children, queued = Children(namespaces=(namespace,)), []
    watches = Reflectors(kube, (namespace,), children, queued.append)
    watches.start()
    try:
        assert watches.wait_listed(30)  # what the leader's start waits for before watching FineTuneJobs
        assert children.get(namespace, "before")[0]
        assert children.get(namespace, "stranger") == ([], [])  # the selector leaves other Jobs out
        assert queued == []  # the first LIST queues nothing (the FineTuneJobs' own listing does)

        control_plane.apply(_job(namespace, "after"))
        wait_for(lambda: (namespace, "after") in queued, timeout=30, what="the new Job's event")
        control_plane.kubectl("delete", "job", "-n", namespace, "before-a1", "--wait=false")
        wait_for(lambda: children.get(namespace, "before") == ([], []), timeout=30, what="the deletion's event")
        assert (namespace, "before") in queued

        # Stopped and started again, as when the runner restarts Kopf: a deletion meanwhile still arrives as its
        # event, since the watches go on from the last version seen instead of LISTing again.
        started = time.monotonic()
        watches.stop()
        assert time.monotonic() - started < 5  # quiet watches, closed rather than waited out
        assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("finetune-watch"))
        control_plane.kubectl("delete", "job", "-n", namespace, "after-a1", "--wait=false")
        lists = kube.lists
        watches.start()
        wait_for(lambda: children.get(namespace, "after") == ([], []), timeout=30, what="the deletion, resumed")
        assert kube.lists == lists
    finally:
        watches.stop()
