"""End to end with object storage: a FineTuneJob on the real node reads its model and data from a real S3 server
(SeaweedFS, tests/s3_live.py, listening on the plane's bridge so pods reach it), is interrupted mid-training (its
pod deleted), resumes from the checkpoint committed in the bucket, and ends with the model in the bucket and
s3:// URIs in its status. The credentials reach the pod only from a Secret, key by key, and appear nowhere else.

Run (the plane and the images must be built; the S3 server listens on the bridge fto0):
    FTO_KEEP_CLUSTER=1 FTO_S3_HOST=10.245.0.1 HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/e2e/test_s3_storage.py
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import pytest

import tiny_models
from e2e.conftest import ON_REAL_NODE, Cluster
from s3_live import ACCESS_KEY, SECRET_KEY, start

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

BRIDGE = "10.245.0.1"  # the plane's bridge fto0: the host as the node's pods see it


@pytest.fixture(scope="module")
def s3_on_bridge(tmp_path_factory):
    from helm_chart import require_tool
    from s3_live import weed_binary

    require_tool(weed_binary(), "tools/seaweedfs/build.sh (make plane)")
    server = start(tmp_path_factory.mktemp("seaweedfs-e2e"), host=os.environ.get("FTO_S3_HOST", BRIDGE))
    yield server
    server.stop()


def test_job_reads_from_s3_resumes_from_the_bucket_after_its_pod_is_deleted(cluster: Cluster, s3_on_bridge,
                                                                         tmp_path) -> None:
    s3 = s3_on_bridge
    bucket = s3.bucket("e2e")
    model_dir = tiny_models.save_tiny_model("bert", "AutoModelForSequenceClassification", tmp_path / "bert-wide",
                                            num_labels=2, hidden_size=256, intermediate_size=1024,
                                            num_attention_heads=4)
    tiny_models.write_sentiment_csv(tmp_path / "data" / "train.csv", n=1600, seed=2)
    tiny_models.write_sentiment_csv(tmp_path / "data" / "validation.csv", n=16, seed=3)
    model = s3.upload_dir(model_dir, bucket, "models/bert-wide")
    data = s3.upload_dir(tmp_path / "data", bucket, "data/big")
    output = f"s3://{bucket}/out/s3job"
    cluster.cp.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials",
                                                                         "namespace": cluster.ns},
                      "stringData": {"access": ACCESS_KEY, "secret": SECRET_KEY}})
    spec: dict[str, Any] = {
        "model": {"source": model}, "task": "sequence-classification",
        "dataset": {"source": data, "columns": {"text": ["text"], "label": "label"}, "maxLength": 32},
        "strategy": {"type": "partial", "layers": "last:2"},
        "training": {"epochs": 1, "batchSize": 4, "learningRate": 1e-3, "logEvery": 1, "saveEvery": 20},
        "resources": {"cpu": "1", "memory": "2Gi", **ON_REAL_NODE},
        "output": {"location": output, "keepCheckpoints": 2},
        "storage": {"s3": {"endpoint": s3.endpoint, "region": "us-east-1", "addressingStyle": "path",
                           "secretRef": {"name": "s3-credentials", "accessKeyIdKey": "access",
                                         "secretAccessKeyKey": "secret"}}},
        "runPolicy": {"backoffLimit": 2},
    }
    cluster.apply_job("s3job", **spec)
    planned = -(-1600 // 4)

    def committed_mid_epoch() -> dict[str, Any] | None:  # a checkpoint is in the bucket, training goes on
        progress = cluster.status("s3job").get("progress") or {}
        pods = [p for p in cluster.pods("s3job", 1) if p["status"].get("phase") == "Running"]
        done = [k for k in s3.keys(bucket, "out/s3job/checkpoints/") if k.endswith("/COMPLETE")]
        return pods[0] if pods and done and (progress.get("step") or 0) < planned // 2 else None

    pod = cluster.cp.wait_for(committed_mid_epoch, timeout=400, interval=0.5, what="a checkpoint in the bucket")
    deleted_at = time.monotonic()
    cluster.cp.kubectl("delete", "pod", "-n", cluster.ns, pod["metadata"]["name"], "--wait=false")
    status = cluster.wait_phase("s3job", ("Succeeded", "Failed"), timeout=900)
    assert status["phase"] == "Succeeded", cluster.diagnose("s3job")
    assert status["attempts"] == 2

    [second] = cluster.pods("s3job", 2)
    log = cluster.logs(second["metadata"]["name"])
    assert re.search(r"restored checkpoint step \d+ from s3://", log), log[-3000:]
    resumed = re.search(r"resumed from \S+: step (\d+)/(\d+)", log)
    assert resumed and 0 < int(resumed.group(1)) < planned, log[-3000:]
    assert status["output"]["location"] == f"{output}/model"
    assert status["checkpoint"] == {"location": f"{output}/checkpoints/step-{planned}", "step": planned}
    keys = s3.keys(bucket, "out/s3job/")
    assert "out/s3job/model/COMPLETE" in keys and "out/s3job/summary.json" in keys
    complete = [k for k in keys if k.startswith("out/s3job/checkpoints/") and k.endswith("/COMPLETE")]
    assert len(complete) == 2  # keepCheckpoints

    # The credentials only in the Secret: not in the FineTuneJob, its events, the Jobs and pods (the trainer's
    # config is a pod annotation) or the trainer's log.
    seen = str(cluster.ftj("s3job")) + str(cluster.events("s3job")) + log
    seen += cluster.cp.kubectl("get", "jobs,pods", "-n", cluster.ns, "-o", "yaml").stdout
    assert SECRET_KEY not in seen and ACCESS_KEY not in seen
    print(f"\ns3 job: pod deleted, attempt 2 resumed at step {resumed.group(1)}/{planned} from the bucket and "
          f"succeeded {time.monotonic() - deleted_at:.0f}s after the deletion")
