"""The manifests one attempt of a FineTuneJob runs as (render.py): golden files for the examples, plus the
properties the operator's correctness depends on, asserted directly so a golden update cannot hide them.

Regenerate the golden files after an intended change with:  UPDATE_GOLDEN=1 pytest tests/operator/test_render.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from finetune_operator.manifest import load_finetunejob
from finetune_operator.places import InPod, trainer_config
from finetune_operator.render import build_attempt
from finetune_operator.settings import Settings

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "render"
SETTINGS = Settings(trainer_image="ghcr.io/finetune-operator/trainer:test")
UID = "3f1c5b8e-0000-4000-8000-000000000001"


def _ftj(example: str, namespace: str = "ml", **spec_updates):
    ftj = load_finetunejob(REPO / "examples" / example)
    ftj.metadata.namespace, ftj.metadata.uid = namespace, UID
    if spec_updates:
        data = ftj.model_dump(by_alias=True, exclude_none=True, mode="json")
        for path, value in spec_updates.items():
            node = data["spec"]
            *parents, leaf = path.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            if value is None:
                node.pop(leaf, None)
            else:
                node[leaf] = value
        ftj = type(ftj).model_validate(data)
    return ftj


def multinode_ftj():
    """The cluster example scaled out: 2 nodes x 4 GPUs, without the queue."""
    return _ftj("cluster-llama-2gpu.yaml", resources__nodes=2, resources__gpus=4, queueName=None)


CASES = {
    "quickstart": lambda: _ftj("quickstart.yaml"),
    "s3-with-cache": lambda: _ftj("s3-minilm.yaml", storage__s3__endpoint=None, storage__s3__region=None),
    "single-node-2gpu": lambda: _ftj("cluster-llama-2gpu.yaml"),
    "multi-node-2x4gpu": multinode_ftj,
    "export-oci": lambda: _ftj("export-oci.yaml"),
    "pod-overrides": lambda: _ftj("cluster-pod-overrides.yaml"),
}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # The trainer config inside the pod template's annotation reads as YAML, not as one escaped line.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


# The S3 case: the endpoint and region from the operator's defaults, the downloads on the chart's cache claim.
CASE_SETTINGS = {"s3-with-cache": Settings(trainer_image=SETTINGS.trainer_image, s3_endpoint="http://10.245.0.1:8333",
                                           s3_region="eu-west-1", cache_claim="finetune-cache")}


def _render(case: str) -> str:
    settings = CASE_SETTINGS.get(case, SETTINGS)
    return yaml.dump_all(build_attempt(CASES[case](), 1, settings), Dumper=_Dumper, sort_keys=False, width=120)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    path = GOLDEN / f"{case}.yaml"
    text = _render(case)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{case} renders differently from {path}; if intended, rerun with UPDATE_GOLDEN=1"


def _objects(ftj, attempt=1, **kw):
    objs = build_attempt(ftj, attempt, SETTINGS, **kw)
    return {o["kind"]: o for o in objs}, [o["kind"] for o in objs]


def _pod(job_obj):
    return job_obj["spec"]["template"]["spec"]


def _config(job_obj) -> dict:
    """The trainer's config as the pod reads it: its template's annotation, mounted as the config file."""
    return yaml.safe_load(job_obj["spec"]["template"]["metadata"]["annotations"]["finetune.io/trainer-config"])


def test_children_are_named_by_attempt_and_owned_by_the_finetunejob():
    objs, order = _objects(_ftj("quickstart.yaml"), attempt=3)
    assert order == ["Job"]  # the trainer's config is in the Job (an annotation of its pods), no ConfigMap
    for obj in objs.values():
        meta = obj["metadata"]
        assert meta["name"] == "quickstart-a3"
        assert meta["namespace"] == "ml"
        assert meta["labels"]["finetune.io/job"] == "quickstart"
        assert meta["labels"]["finetune.io/attempt"] == "3"
        [owner] = meta["ownerReferences"]
        assert owner == {"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "name": "quickstart",
                         "uid": UID, "controller": True, "blockOwnerDeletion": True}


@pytest.mark.parametrize("example", ["cluster-llama-2gpu.yaml", "cluster-pod-overrides.yaml"])
def test_pod_meets_the_restricted_pod_security_profile(example):
    pod = _pod(_objects(_ftj(example))[0]["Job"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "readOnlyRootFilesystem": True, "runAsNonRoot": True}
    allowed = {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected", "downwardAPI", "csi",
               "ephemeral"}
    assert all(set(v) - {"name"} <= allowed for v in pod["volumes"])
    assert not {"hostNetwork", "hostPID", "hostIPC", "hostUsers"} & set(pod)
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_job_leaves_retries_to_the_operator():
    job = _objects(_ftj("quickstart.yaml"))[0]["Job"]
    assert job["spec"]["backoffLimit"] == 0
    assert _pod(job)["restartPolicy"] == "Never"
    assert _pod(job)["terminationGracePeriodSeconds"] == SETTINGS.termination_grace_seconds
    [rule] = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2]
    container = _pod(job)["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["command"] == ["python", "-m", "finetune_trainer", "--config", "/etc/finetune/config.yaml"]
    assert {"name": "metrics", "containerPort": 9090} in container["ports"]


def test_resources_gpus_and_scheduling():
    pod = _pod(_objects(_ftj("cluster-llama-2gpu.yaml"))[0]["Job"])
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "2"}
    assert resources["requests"] == resources["limits"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["containers"][0]["command"][:3] == ["torchrun", "--standalone", "--nproc-per-node=2"]


def test_gpu_resource_name_comes_from_the_job_else_the_operator():
    amd = Settings(gpu_resource="amd.com/gpu")
    ftj = _ftj("cluster-llama-2gpu.yaml")
    limits = lambda j, s: _pod(build_attempt(j, 1, s)[-1])["containers"][0]["resources"]["limits"]  # noqa: E731
    assert "amd.com/gpu" in limits(ftj, amd)
    own = _ftj("cluster-llama-2gpu.yaml", resources__gpuResource="example.com/tpu")
    assert limits(own, amd)["example.com/tpu"] == "2" and "amd.com/gpu" not in limits(own, amd)
    assert "resources" not in _pod(build_attempt(_ftj("quickstart.yaml"), 1, SETTINGS)[-1])["containers"][0]


def test_pvc_locations_are_mounted_and_passed_to_the_trainer_as_uris():
    ftj = _ftj("cluster-llama-2gpu.yaml")
    objs, _ = _objects(ftj)
    pod = _pod(objs["Job"])
    claims = {v["persistentVolumeClaim"]["claimName"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims["datasets"]["persistentVolumeClaim"]["readOnly"] is True
    assert "readOnly" not in claims["checkpoints"]["persistentVolumeClaim"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "readOnly" not in mounts["/mnt/pvc/checkpoints"]
    assert mounts["/mnt/pvc/datasets"]["readOnly"] is True
    config = _config(objs["Job"])
    # The trainer maps pvc:// to its mount under FINETUNE_PVC_ROOT, and reports pvc:// URIs back into status.
    assert config["dataset"]["source"] == "pvc://datasets/instructions"
    assert config["output"]["location"] == "pvc://checkpoints/llama-instruct-lora"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["FINETUNE_PVC_ROOT"] == "/mnt/pvc"
    assert config["model"]["source"] == "hf://meta-llama/Llama-3.2-1B"
    assert config["metricsPort"] == 9090
    assert trainer_config(ftj, InPod(metrics_port=9090)).wire() == config


def test_secret_refs_become_env_from_once():
    ftj = _ftj("cluster-llama-2gpu.yaml", dataset__secretRef={"name": "hf-token"})
    container = _pod(_objects(ftj)[0]["Job"])["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert "envFrom" not in _pod(_objects(_ftj("quickstart.yaml"))[0]["Job"])["containers"][0]


def test_unset_output_goes_to_scratch_space():
    objs, _ = _objects(_ftj("quickstart.yaml"))
    pod = _pod(objs["Job"])
    assert {"name": "output", "emptyDir": {}} in pod["volumes"]
    assert _config(objs["Job"])["output"]["location"] == "/var/lib/finetune/output"


def test_queue_suspend_deadline_and_image():
    ftj = _ftj("cluster-llama-2gpu.yaml", image="registry.example/trainer:dev")
    rendered = _objects(ftj, suspend=True, active_deadline_seconds=600)[0]["Job"]
    assert rendered["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-team-a"
    assert rendered["spec"]["suspend"] is True
    assert rendered["spec"]["activeDeadlineSeconds"] == 600
    assert _pod(rendered)["containers"][0]["image"] == "registry.example/trainer:dev"
    plain = _objects(_ftj("quickstart.yaml"))[0]["Job"]
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]
    assert plain["spec"]["suspend"] is False and "activeDeadlineSeconds" not in plain["spec"]
    assert _pod(plain)["containers"][0]["image"] == SETTINGS.trainer_image


def test_pod_overrides_join_the_operators_pod_after_its_own():
    pod = _pod(_objects(_ftj("cluster-pod-overrides.yaml"))[0]["Job"])
    [container] = pod["containers"]
    names = [e["name"] for e in container["env"]]
    assert names[:2] == ["FINETUNE_JOB_NAME", "FINETUNE_ATTEMPT"]
    assert names[-4:] == ["NCCL_DEBUG", "HF_HUB_CACHE", "WANDB_API_KEY", "NODE_NAME"]
    assert container["env"][-2]["valueFrom"] == {"secretKeyRef": {"name": "wandb", "key": "api-key", "optional": True}}
    assert [v["name"] for v in pod["volumes"]][-2:] == ["hf-cache", "ca-bundle"]
    assert pod["volumes"][-1]["configMap"] == {"name": "corporate-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert container["volumeMounts"][-1] == {"name": "ca-bundle", "mountPath": "/etc/ssl/corporate", "readOnly": True}
    assert pod["serviceAccountName"] == "trainer-bucket-reader"
    assert pod["automountServiceAccountToken"] is False  # the trainer still never talks to the API
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 50
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_tolerations_in_the_deprecated_place_still_apply_before_spec_pods():
    old = {"key": "old", "operator": "Exists"}
    pod = _pod(_objects(_ftj("cluster-llama-2gpu.yaml", resources__tolerations=[old]))[0]["Job"])
    assert pod["tolerations"] == [old, {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    plain = _pod(_objects(_ftj("quickstart.yaml"))[0]["Job"])
    assert not {"tolerations", "affinity", "serviceAccountName", "imagePullSecrets"} & set(plain)


def test_pod_metadata_cannot_replace_the_operators_labels():
    ftj = _ftj("quickstart.yaml", podMetadata={"labels": {"team": "nlp", "finetune.io/attempt": "9"},
                                               "annotations": {"finetune.io/fake-exit-code": "75"}})
    meta = _objects(ftj)[0]["Job"]["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "nlp"
    assert meta["labels"]["finetune.io/attempt"] == "1"
    assert meta["annotations"]["finetune.io/fake-exit-code"] == "75"


def test_multi_node_is_an_indexed_job_with_rendezvous_on_rank_0():
    objs, order = _objects(multinode_ftj(), attempt=2)
    assert order == ["Service", "Job"]
    job, service = objs["Job"], objs["Service"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    pod = _pod(job)
    assert pod["subdomain"] == service["metadata"]["name"] == "llama-instruct-lora-a2"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"finetune.io/job": "llama-instruct-lora", "finetune.io/attempt": "2"}
    container = pod["containers"][0]
    command = container["command"]
    assert command[0] == "torchrun"
    assert "--nnodes=2" in command and "--nproc-per-node=4" in command
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in command
    assert "--master-addr=llama-instruct-lora-a2-0.llama-instruct-lora-a2" in command
    assert "--master-port=29500" in command
    assert command[-4:] == ["-m", "finetune_trainer", "--config", "/etc/finetune/config.yaml"]
    index_env = next(e for e in container["env"] if e["name"] == "JOB_COMPLETION_INDEX")
    assert "job-completion-index" in index_env["valueFrom"]["fieldRef"]["fieldPath"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"name": "rendezvous", "containerPort": 29500} in container["ports"]


def test_push_credentials_are_a_mounted_file_and_the_uid_an_env_var():
    job = _objects(_ftj("export-oci.yaml"))[0]["Job"]
    pod = _pod(job)
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FINETUNE_JOB_UID"] == {"name": "FINETUNE_JOB_UID", "value": UID}
    assert env["FINETUNE_REGISTRY_AUTH"]["value"] == "/var/run/secrets/finetune.io/registry/.dockerconfigjson"
    # The Secret is a read-only file for the trainer, never environment (which `kubectl describe` and crash
    # dumps show); optional, so a missing Secret fails the trainer's pre-flight with its name instead of a pod
    # that waits for the volume.
    assert "envFrom" not in container
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": "registry-push", "optional": True,
                                "items": [{"key": ".dockerconfigjson", "path": ".dockerconfigjson"}]}
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": "/var/run/secrets/finetune.io/registry", "readOnly": True}
    config = _config(_objects(_ftj("export-oci.yaml"))[0]["Job"])
    assert config["output"]["push"] == {"reference": "registry.example.com/nlp/reviews-lora:v1",
                                        "secretRef": {"name": "registry-push"}, "insecure": False}


def test_no_push_no_registry_volume():
    pod = _pod(_objects(_ftj("quickstart.yaml"))[0]["Job"])
    assert not [v for v in pod["volumes"] if "secret" in v]
    assert "FINETUNE_REGISTRY_AUTH" not in {e["name"] for e in pod["containers"][0]["env"]}


def _trainer(objects):
    return objects[-1]["spec"]["template"]["spec"]


def test_s3_credentials_come_from_the_secret_key_by_key_and_never_enter_the_config():
    settings = CASE_SETTINGS["s3-with-cache"]
    objects = build_attempt(CASES["s3-with-cache"](), 1, settings)
    env = {e["name"]: e for e in _trainer(objects)["containers"][0]["env"]}
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[variable] == {"name": variable, "valueFrom": {"secretKeyRef": {"name": "s3-credentials",
                                                                                "key": variable}}}
    config = _config(objects[-1])
    # what the job left unset comes from the operator's defaults; the Secret travels by name only
    assert config["storage"]["s3"] == {"endpoint": "http://10.245.0.1:8333", "region": "eu-west-1",
                                       "addressingStyle": "path", "secretRef": {
                                           "name": "s3-credentials", "accessKeyIdKey": "AWS_ACCESS_KEY_ID",
                                           "secretAccessKeyKey": "AWS_SECRET_ACCESS_KEY"}}
    job_own = build_attempt(_ftj("s3-minilm.yaml"), 1, settings)
    own = _config(job_own[-1])["storage"]["s3"]
    assert (own["endpoint"], own["region"]) == ("http://seaweedfs.storage.svc:8333", "us-east-1")


def test_the_cache_claim_holds_downloads_of_every_attempt_and_without_it_they_stay_in_the_pod():
    pod = _trainer(build_attempt(CASES["s3-with-cache"](), 1, CASE_SETTINGS["s3-with-cache"]))
    assert {"name": "download-cache", "persistentVolumeClaim": {"claimName": "finetune-cache"}} in pod["volumes"]
    assert {"name": "download-cache", "mountPath": "/var/cache/finetune"} in pod["containers"][0]["volumeMounts"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["FINETUNE_CACHE_DIR"] == "/var/cache/finetune" and env["HF_HOME"] == "/var/cache/finetune/huggingface"

    plain = _trainer(build_attempt(CASES["s3-with-cache"](), 1, SETTINGS))
    assert not [v for v in plain["volumes"] if v["name"] == "download-cache"]
    env = {e["name"]: e.get("value") for e in plain["containers"][0]["env"]}
    assert "FINETUNE_CACHE_DIR" not in env and env["HF_HOME"] == "/tmp/huggingface"
