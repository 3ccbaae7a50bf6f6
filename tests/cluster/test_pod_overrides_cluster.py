"""spec.pod against the real API server: the CRD's rules refuse what pod_overrides.py refuses, with the same words,
at `kubectl apply`; and a job using every override runs its pod in a namespace that enforces Pod Security
"restricted" (the admission the overrides must never break), with the operator running as the chart's RBAC.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from operator_process import Env, install_crd, operator_env

if TYPE_CHECKING:
    from conftest import ControlPlane

pytestmark = pytest.mark.cluster

CACHE = {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}}
REFUSED = {  # spec.pod -> words the API server must say
    "reserved-env": ({"env": [{"name": "HF_HOME", "value": "/x"}]}, "spec.pod.env: the operator sets"),
    "host-path": ({"volumes": [{"name": "host", "hostPath": {"path": "/"}}]},
                  'unknown field "spec.pod.volumes[0].hostPath"'),
    "no-source": ({"volumes": [{"name": "nothing"}]}, "spec.pod.volumes: set exactly one source"),
    "reserved-volume": ({"volumes": [{"name": "dshm", "emptyDir": {}}]}, "are the operator's"),
    "mount-over-config": ({"volumes": [CACHE], "volumeMounts": [{"name": "cache", "mountPath": "/etc/finetune"}]},
                          "spec.pod.volumeMounts: mountPath may not be"),
    "mount-of-nothing": ({"volumes": [CACHE], "volumeMounts": [{"name": "x", "mountPath": "/x"}]},
                         "each name must be a volume of spec.pod.volumes"),
    "duplicate-env": ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "Duplicate value"),
    "privileged": ({"securityContext": {"privileged": True}}, 'unknown field "spec.pod.securityContext"'),
}


@pytest.fixture(scope="module")
def env(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with operator_env(control_plane, tmp_path_factory.mktemp("pod-overrides"), prefix="ftpo") as environment:
        yield environment


@pytest.mark.parametrize("pod, words", REFUSED.values(), ids=REFUSED.keys())
def test_the_crd_refuses_what_pydantic_refuses(control_plane: ControlPlane, pod: dict, words: str,
                                               tmp_path: Path) -> None:
    from finetune_operator.manifest import ManifestError, parse_finetunejob

    install_crd(control_plane)
    manifest = {"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
                "metadata": {"name": "refused", "namespace": "default"},
                "spec": {"model": {"source": "hf://org/tiny"}, "task": "sequence-classification",
                         "dataset": {"source": "hf://glue?config=mrpc"}, "strategy": {"type": "full"}, "pod": pod}}
    answer = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert answer.returncode != 0 and words in answer.stderr, answer.stderr
    with pytest.raises(ManifestError):  # and `finetune plan` refuses it too
        parse_finetunejob(manifest)


def test_every_override_reaches_a_pod_admitted_under_restricted(env: Env) -> None:
    env.cp.kubectl("create", "serviceaccount", "bucket-reader", "-n", env.ns)
    pod_overrides = {
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "serviceAccountName": "bucket-reader",
        "volumes": [CACHE, {"name": "ca", "configMap": {"name": "corporate-ca", "optional": True}},
                    {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token",
                                                                                        "audience": "sts"}}]}}],
        "volumeMounts": [{"name": "cache", "mountPath": "/tmp/hf-cache"},
                         {"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True},
                         {"name": "token", "mountPath": "/var/run/secrets/cloud", "readOnly": True}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "type", "operator": "In", "values": ["kwok"]}]}]}}},
        "tolerations": [{"key": "example.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "registry-credentials"}],
    }
    env.apply_job("overrides", pod=pod_overrides)
    env.wait_phase("overrides", "Succeeded")
    [pod] = env.pods("overrides")
    spec = pod["spec"]
    [container] = spec["containers"]
    assert spec["serviceAccountName"] == "bucket-reader" and spec["automountServiceAccountToken"] is False
    assert {"name": "NCCL_DEBUG", "value": "INFO"} in container["env"]
    assert {"name": "cache", "mountPath": "/tmp/hf-cache"} in container["volumeMounts"]
    assert {v["name"] for v in spec["volumes"]} >= {"config", "tmp", "dshm", "cache", "ca", "token"}
    assert spec["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert spec["affinity"] == pod_overrides["affinity"]
    assert {"key": "example.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def _undescribed(explained: str) -> list[str]:
    """The fields `kubectl explain` lists ("  name<TAB><type>") without a description (a line indented 4) before
    the blank line that ends the field."""
    undescribed, field, described = [], None, False
    for line in explained.split("FIELDS:", 1)[1].splitlines() + [""]:
        if line.startswith("  ") and "\t<" in line:
            field, described = line.split()[0], False
        elif line.startswith("    ") and line.strip():
            described = True
        elif not line.strip() and field:
            if not described:
                undescribed.append(field)
            field = None
    return undescribed


@pytest.mark.parametrize("path", ["spec", "spec.pod", "spec.pod.volumes", "spec.resources", "spec.strategy",
                                  "status", "status.progress", "status.conditions"])
def test_kubectl_explain_describes_every_field(control_plane: ControlPlane, path: str) -> None:
    install_crd(control_plane)
    explained = control_plane.kubectl("explain", f"finetunejob.{path}").stdout
    assert _undescribed(explained) == [], explained
