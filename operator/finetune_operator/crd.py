"""Generate the FineTuneJob CustomResourceDefinition from the pydantic API models.

Pydantic emits JSON Schema (2020-12); the apiserver wants a structural OpenAPI v3 schema: no $ref, no anyOf
around nullables, boolean exclusive bounds, no titles. ``structural()`` does that translation, and nothing else:
every constraint in the CRD comes from a Field or a Rule in the models.
"""

from __future__ import annotations

from typing import Any

import yaml

from finetune_operator import api

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy.type"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.source"},
    {"name": "Progress", "type": "number", "jsonPath": ".status.progress.percent",
     "description": "Percent of optimizer steps done"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.metrics.trainLoss"},
    {"name": "Eval", "type": "string", "jsonPath": ".status.evaluation.headline",
     "description": "The final model's headline metric (spec.evaluation): the first gate's, else the first metric"},
    {"name": "Gates", "type": "string", "jsonPath": '.status.conditions[?(@.type=="EvaluationPassed")].reason',
     "description": "GatesPassed, or the gate the final model missed"},
    {"name": "Cost", "type": "number", "jsonPath": ".status.usage.estimatedCost.amount", "priority": 1},
    {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP = {"title", "$defs", "discriminator"}
CEL = "x-kubernetes-validations"


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = _resolve(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        extra = _resolve({k: v for k, v in node.items() if k != "$ref"}, defs)
        # A field's own CEL rules (immutability) add to its type's rules rather than replace them.
        rules = target.get(CEL, []) + extra.get(CEL, [])
        return {**target, **extra, **({CEL: rules} if rules else {})}
    return {k: _resolve(v, defs) for k, v in node.items()}


def _without_null(node: dict[str, Any]) -> dict[str, Any]:
    """Collapse pydantic's ``anyOf: [X, {type: null}]`` for optional fields into X (absence means null)."""
    options = node.get("anyOf")
    if not options:
        return node
    non_null = [o for o in options if o.get("type") != "null"]
    if len(non_null) != 1:
        raise ValueError(f"union types are not structural: {node}")
    merged = {**{k: v for k, v in node.items() if k != "anyOf"}, **non_null[0]}
    if "default" in node and node["default"] is None:
        merged.pop("default")
    return merged


def structural(node: Any) -> Any:
    if isinstance(node, list):
        return [structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = _without_null(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: structural(prop) for name, prop in value.items()}
        else:
            out[key] = structural(value)
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if out.get("default") is None:
        out.pop("default", None)
    if out.get("x-kubernetes-preserve-unknown-fields") and out.get("additionalProperties") is True:
        out.pop("additionalProperties")  # a free-form object (dict[str, Any]) is kept as written, not pruned
    if out.get("type") == "object" and "properties" in out and out.get("additionalProperties") is False:
        # Structural schemas prune unknown fields already; an explicit false is not allowed next to properties.
        out.pop("additionalProperties")
    return out


def _openapi(model: type) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return structural(_resolve(schema, schema.get("$defs", {})))


def build_crd() -> dict[str, Any]:
    spec_schema = _openapi(api.FineTuneJobSpec)
    status_schema = _openapi(api.FineTuneJobStatus)
    name_schema = structural(api.ObjectMeta.model_json_schema(by_alias=True)["properties"]["name"])
    root = {
        "type": "object",
        "description": "A fine-tuning run of a pre-trained language model.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"{api.API_VERSION}"},
            "kind": {"type": "string", "description": f"{api.KIND}"},
            # The apiserver allows nothing but name here; `kubectl explain` describes metadata itself.
            "metadata": {"type": "object", "properties": {"name": name_schema}},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["all", "finetune"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": api.VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": root},
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }


def render_crd() -> str:
    return "# Generated by `finetune crd` from finetune_operator/api.py; do not edit.\n" + yaml.safe_dump(
        build_crd(), sort_keys=False, width=120)
