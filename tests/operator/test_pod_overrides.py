"""spec.pod (pod_overrides.py): what a user may add to trainer pods, and every refusal naming its field.

The same rules run as CEL in the CRD; tests/cluster/test_pod_overrides_cluster.py sends these specs to the API
server. Here: pydantic (what `finetune plan`/`run` and the operator see), and that the reserved names and paths are
exactly what render.py uses, so the two cannot drift apart.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from finetune_operator.manifest import validation_problems
from finetune_operator.pod_overrides import RESERVED_PATHS, RESERVED_VOLUMES, PodOverrides
from finetune_operator.names import CLAIM_VOLUME_PREFIX, OPERATOR_ENV
from finetune_operator.render import build_job
from finetune_operator.settings import Settings
from test_render import _ftj, multinode_ftj

CACHE = {"name": "cache", "emptyDir": {}}

REFUSED = {
    "reserved-env": ({"env": [{"name": "HF_HOME", "value": "/x"}]}, "env[0]", "the operator sets"),
    "value-and-value-from": ({"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]},
                             "env[0]", "exclusive"),
    "two-sources": ({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"},
                                                          "secretKeyRef": {"name": "s", "key": "k"}}}]},
                    "env[0].valueFrom", "exactly one"),
    "duplicate-env": ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "env", "duplicate name"),
    "host-path": ({"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}, "volumes[0]",
                  'hostPath is not allowed (Pod Security "restricted")'),
    "no-source": ({"volumes": [{"name": "nothing"}]}, "volumes[0]", "exactly one source"),
    "reserved-volume": ({"volumes": [{"name": "config", "emptyDir": {}}]}, "volumes[0]", "are the operator's"),
    "claim-volume-name": ({"volumes": [{"name": "pvc-0", "emptyDir": {}}]}, "volumes[0]", "are the operator's"),
    "mount-of-nothing": ({"volumes": [CACHE], "volumeMounts": [{"name": "other", "mountPath": "/cache"}]}, "",
                         "each name must be a volume of spec.pod.volumes"),
    "mount-over-config": ({"volumes": [CACHE], "volumeMounts": [{"name": "cache", "mountPath": "/etc/finetune"}]},
                          "volumeMounts[0]", "operator's mounts"),
    "mount-above-claims": ({"volumes": [CACHE], "volumeMounts": [{"name": "cache", "mountPath": "/mnt"}]},
                           "volumeMounts[0]", "operator's mounts"),
    "mount-inside-claims": ({"volumes": [CACHE], "volumeMounts": [{"name": "cache", "mountPath": "/mnt/pvc/x"}]},
                            "volumeMounts[0]", "operator's mounts"),
    "mount-climbs": ({"volumes": [CACHE], "volumeMounts": [{"name": "cache", "mountPath": "/tmp/../etc/finetune"}]},
                     "volumeMounts[0].mountPath", "should match pattern"),
    "privileged": ({"securityContext": {"privileged": True}}, "securityContext", "unknown field"),
    "host-network": ({"hostNetwork": True}, "hostNetwork", "unknown field"),
}


@pytest.mark.parametrize("pod, field, words", REFUSED.values(), ids=REFUSED.keys())
def test_refusals_name_the_field(pod, field, words):
    with pytest.raises(ValidationError) as caught:
        PodOverrides.model_validate(pod)
    [problem] = validation_problems(caught.value)
    assert problem.startswith(f"{field}: " if field else "") and words in problem, problem


def test_what_is_allowed():
    pod = PodOverrides.model_validate({
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "MY.VAR", "value": "$(HOME)/x"}],
        "volumes": [CACHE, {"name": "certs", "secret": {"secretName": "ca"}},
                    {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}],
        "volumeMounts": [{"name": "cache", "mountPath": "/tmp/huggingface"},  # under /tmp is allowed
                         {"name": "certs", "mountPath": "/etc/ssl/extra", "readOnly": True},
                         {"name": "token", "mountPath": "/var/run/secrets/tokens"}],
    })
    assert pod.wire()["volumes"][2]["projected"] == {"sources": [{"serviceAccountToken": {"path": "t"}}]}


def test_every_name_and_path_render_uses_is_reserved():
    for ftj in (_ftj("cluster-pod-overrides.yaml"), multinode_ftj(), _ftj("quickstart.yaml")):
        pod = build_job(ftj, 1, Settings())["spec"]["template"]["spec"]
        [container] = pod["containers"]
        user = ftj.spec.pod.wire() if ftj.spec.pod else {}
        user_env = {e["name"] for e in user.get("env", [])}
        user_volumes = {v["name"] for v in user.get("volumes", [])}
        assert {e["name"] for e in container["env"]} - user_env <= set(OPERATOR_ENV)
        for volume in pod["volumes"]:
            if volume["name"] not in user_volumes:
                assert volume["name"] in RESERVED_VOLUMES or volume["name"].startswith(CLAIM_VOLUME_PREFIX)
        for mount in container["volumeMounts"]:
            if mount["name"] not in user_volumes:
                assert any(mount["mountPath"] == p or mount["mountPath"].startswith(p + "/") for p in RESERVED_PATHS)
