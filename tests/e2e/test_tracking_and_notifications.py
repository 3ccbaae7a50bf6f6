"""End to end on the real node: a trainer pod (the image built from the Dockerfile, mlflow-skinny and tensorboardX
inside) logs its run to a real `mlflow server` on the plane's bridge, the run id reaches status.tracking, the
TensorBoard event files land on the volume; the chart-installed operator POSTs the job's transitions to a receiver
on the bridge (spec.notify), from its own pod.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from e2e.conftest import Cluster
from e2e.test_real_pods import spec
from mlflow_server import mlflow_server
from notify_receiver import Receiver

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

BRIDGE = "10.245.0.1"  # the host as pods reach it (docs/cluster.md)


def test_a_pod_tracks_in_mlflow_and_the_operator_notifies_a_receiver(cluster: Cluster, tmp_path) -> None:
    with mlflow_server(tmp_path, host=BRIDGE) as uri, Receiver(host=BRIDGE) as receiver:
        body = spec(name="tracked", tracking={"mlflow": {"trackingUri": uri, "experiment": "e2e"}},
                    notify={"sinks": [{"url": receiver.url}]})
        cluster.apply_job("tracked", **body)
        status = cluster.wait_phase("tracked", ("Succeeded", "Failed"), timeout=600)
        assert status["phase"] == "Succeeded", cluster.diagnose("tracked")
        tracking = status["tracking"]
        assert tracking["tensorboard"] == "pvc://e2e-data/out/tracked/tensorboard"
        assert any((cluster.volume / "out" / "tracked" / "tensorboard").glob("events.out.tfevents.*"))
        assert "TrackingDegraded" not in {c["type"] for c in status["conditions"]}
        run = MlflowClient(tracking_uri=uri).get_run(tracking["mlflowRunId"])
        assert run.info.status == "FINISHED" and run.data.tags["finetune.model_uri"] == status["output"]["location"]
        assert "train_loss" in run.data.metrics and run.data.params["strategy.layers"] == "last:2"
        reasons = sorted(e["reason"] for e in cluster.events("tracked"))
        # Every Event's transition, and the changes of phase that post no Event: Pending on creation, Running.
        got = receiver.wait(len(reasons) + 2, timeout=60)
        assert sorted(r.json()["data"]["reason"] for r in got) == sorted([*reasons, "AttemptCreated", "TrainerRunning"])
        assert "TrainingSucceeded" in reasons
