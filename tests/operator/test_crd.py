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
        prefixes = ("spec.", "strategy.", "dataset.", "resources.", "evaluation.")
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
