"""End to end on the real node: a trainer pod pushes its model to a real OCI registry (go-containerregistry's, behind
the token-auth front of tests/registry_live.py) on the plane's bridge, 10.245.0.1, with the credentials of a
``kubernetes.io/dockerconfigjson`` Secret; status lists the model and the artifact with their digests. Then the
failures as a cluster shows them: wrong credentials fail at once, naming the Secret; an unreachable registry is
retried, and the retry pushes without training.

Run (after `make plane images`; the lead rebuilds the images):
    FTO_KEEP_CLUSTER=1 HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/e2e/test_export_registry.py -v
"""

from __future__ import annotations

import base64
import json

import pytest

from e2e.conftest import Cluster
from e2e.test_real_pods import spec
from ports import free_port
from registry_live import AuthProxy, Registry, crane_binary

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

BRIDGE = "10.245.0.1"  # the plane's bridge: the address pods on the real node reach this machine at
USER, PASSWORD = "e2e-pusher", "e2e-registry-password-91d2"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    server = Registry(crane_binary(), tmp_path_factory.mktemp("registry"), address=BRIDGE)
    proxy = AuthProxy(server, USER, PASSWORD, address=BRIDGE)
    yield server, proxy
    proxy.stop()
    server.stop()


def _registry_secret(cluster: Cluster, name: str, host: str, password: str) -> None:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"username": USER, "password": password, "auth": auth}}})
    cluster.cp.apply({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
                      "metadata": {"name": name, "namespace": cluster.ns},
                      "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()}})


def _pushing(name: str, reference: str, secret: str | None = None, **extra) -> dict:
    body = spec(name=name, **extra)
    body["output"]["push"] = {"reference": reference, "insecure": True,
                              **({"secretRef": {"name": secret}} if secret else {})}
    return body


def test_the_pod_pushes_the_model_and_status_lists_both_outputs(cluster: Cluster, registry) -> None:
    server, proxy = registry
    _registry_secret(cluster, "registry-push", proxy.host, PASSWORD)
    cluster.apply_job("pushed", **_pushing("pushed", f"{proxy.host}/e2e/pushed:v1", "registry-push"))
    status = cluster.wait_phase("pushed", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", cluster.diagnose("pushed")

    [model, artifact] = status["outputs"]
    assert model["kind"] == "model" and model["uri"] == "pvc://e2e-data/out/pushed/model"
    manifest, digest = server.manifest("e2e/pushed", "v1")
    assert artifact == {"kind": "oci", "uri": f"oci://{proxy.host}/e2e/pushed:v1@{digest}", "digest": digest}
    notes = manifest["annotations"]
    assert notes["io.finetune.job.uid"] == cluster.ftj("pushed")["metadata"]["uid"]
    assert notes["io.finetune.model.digest"] == model["digest"]
    assert notes["io.finetune.base.source"] == "pvc://e2e-data/models/bert"
    assert {layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"]} >= {
        "config.json", "model.safetensors"}
    # The Secret's password appears nowhere a user or an operator can read.
    [pod] = cluster.pods("pushed")
    seen = json.dumps(status) + json.dumps(cluster.events("pushed")) + cluster.logs(pod["metadata"]["name"])
    assert PASSWORD not in seen and base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in seen


def test_wrong_credentials_fail_at_once_naming_the_secret(cluster: Cluster, registry) -> None:
    _, proxy = registry
    _registry_secret(cluster, "registry-wrong", proxy.host, "not-the-password")
    cluster.apply_job("badcreds", **_pushing("badcreds", f"{proxy.host}/e2e/badcreds:v1", "registry-wrong"))
    status = cluster.wait_phase("badcreds", ("Succeeded", "Failed"), timeout=300)
    ready = cluster.ready_condition("badcreds")
    assert status["phase"] == "Failed" and status["attempts"] == 1, cluster.diagnose("badcreds")
    assert ready["reason"] == "RegistryAuthFailed" and "Secret 'registry-wrong'" in ready["message"]
    assert "progress" not in status or status["progress"].get("step", 0) == 0  # refused before training


def test_an_unreachable_registry_is_retried_and_the_retry_does_not_train(cluster: Cluster) -> None:
    dead = f"{BRIDGE}:{free_port(BRIDGE)}"  # nothing listens there
    cluster.apply_job("noregistry", **_pushing("noregistry", f"{dead}/e2e/later:v1",
                                               runPolicy={"backoffLimit": 1}))
    status = cluster.wait_phase("noregistry", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Failed" and status["attempts"] == 2, cluster.diagnose("noregistry")
    assert "RegistryUnavailable" in cluster.ready_condition("noregistry")["message"] + \
        cluster.ready_condition("noregistry")["reason"]
    assert [o["kind"] for o in status["outputs"]] == ["model"]
    [second] = cluster.pods("noregistry", attempt=2)
    assert "not training again" in cluster.logs(second["metadata"]["name"])
