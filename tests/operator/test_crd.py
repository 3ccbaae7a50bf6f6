"""The CRD is generated from the API models, and the committed file is exactly that output."""

from pathlib import Path

import yaml

from finetune_operator.crd import build_crd, render_crd

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "finetune.io_finetunejobs.yaml"


def walk(schema, path="$"):
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def root_schema():
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_generated():
    assert CRD_FILE.read_text() == render_crd(), (
        "crds/ is stale: run `finetune crd > crds/finetune.io_finetunejobs.yaml`")


def test_schema_is_structural():
    for path, node in walk(root_schema()):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if node.get("type") == "object":
            assert not ("properties" in node and "additionalProperties" in node), path


def test_cel_rules_carry_field_names():
    rules = [(p, r) for p, n in walk(root_schema()) for r in n.get("x-kubernetes-validations", [])]
    assert len(rules) >= 8
    for path, rule in rules:
        prefixes = ("spec.", "strategy.", "dataset.", "resources.", "evaluation.", "training.")
        assert rule["message"].startswith(prefixes), (path, rule)


def test_immutable_fields_and_printer_columns():
    spec = root_schema()["properties"]["spec"]["properties"]
    for field in ("model", "task", "strategy"):
        assert {"rule": "self == oldSelf", "message": f"spec.{field} is immutable"} in \
            spec[field]["x-kubernetes-validations"]
    version = build_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:5] == ["Phase", "Strategy", "Model", "Progress", "Loss"] and names[-1] == "Age"


def test_defaults_enums_and_ranges_reach_the_schema():
    spec = root_schema()["properties"]["spec"]
    assert set(spec["required"]) == {"model", "task", "dataset", "strategy"}
    strategy = spec["properties"]["strategy"]["properties"]
    assert strategy["type"]["enum"] == ["full", "partial", "hybrid", "lora"]
    gpus = spec["properties"]["resources"]["properties"]["gpus"]
    assert (gpus["minimum"], gpus["default"]) == (0, 0)
    lr = spec["properties"]["training"]["properties"]["learningRate"]
    assert lr["exclusiveMinimum"] is True and lr["minimum"] == 0
    cpu = spec["properties"]["resources"]["properties"]["cpu"]
    assert cpu["x-kubernetes-int-or-string"] is True and "type" not in cpu


def test_crd_file_is_one_yaml_document():
    docs = list(yaml.safe_load_all(CRD_FILE.read_text()))
    assert len(docs) == 1 and docs[0]["kind"] == "CustomResourceDefinition"


def test_push_reference_pattern_and_outputs_reach_the_schema():
    import re

    from finetune_trainer.spec_base import OCI_REFERENCE_PATTERN

    spec = root_schema()["properties"]["spec"]
    push = spec["properties"]["output"]["properties"]["push"]
    assert push["required"] == ["reference"]
    assert push["properties"]["reference"]["pattern"] == OCI_REFERENCE_PATTERN
    assert re.match(push["properties"]["reference"]["pattern"], "registry.example.com/team/m:v1")
    assert push["properties"]["secretRef"]["required"] == ["name"]
    outputs = root_schema()["properties"]["status"]["properties"]["outputs"]["items"]["properties"]
    assert outputs["kind"]["enum"] == ["model", "oci"] and outputs["digest"]["pattern"] == r"^sha256:[0-9a-f]{64}$"


def test_every_spec_and_status_field_is_described():
    """`kubectl explain finetunejob.spec` (and .status) describes every field: each property under spec and status,
    at any depth, carries a description (a Field description or the model's docstring)."""
    root = root_schema()
    undescribed = [path for part in ("spec", "status") for path, node in walk(root["properties"][part], f"$.{part}")
                   if not path.endswith(("[]", "}")) and not node.get("description")]
    assert undescribed == [], f"fields without a description: {undescribed}"


def test_pod_overrides_reach_the_schema_as_lists_keyed_like_core_v1():
    pod = root_schema()["properties"]["spec"]["properties"]["pod"]["properties"]
    assert pod["env"]["x-kubernetes-list-map-keys"] == ["name"]
    assert pod["volumeMounts"]["x-kubernetes-list-map-keys"] == ["mountPath"]
    # Only the volume types Pod Security "restricted" admits exist; unknown ones are pruned or refused.
    volume = pod["volumes"]["items"]["properties"]
    assert set(volume) == {"name", "configMap", "secret", "emptyDir", "persistentVolumeClaim", "csi", "ephemeral",
                           "projected", "downwardAPI"}
    assert pod["affinity"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                               "description": pod["affinity"]["description"]}
