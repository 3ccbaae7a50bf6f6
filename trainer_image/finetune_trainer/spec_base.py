"""The base of the trainer's config models (config.py, output_spec.py) and of the operator's API built on them:
the camelCase wire form, the patterns of locations and references, and the cross-field rules that are both a CEL
expression the CRD enforces at ``kubectl apply`` and a Python check that ``finetune run``/``plan`` and the trainer
enforce, with one message for both, so the two paths refuse the same specs with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# Where models, data and outputs can live: a PersistentVolumeClaim (its name a DNS-1123 subdomain, as the
# apiserver requires), a URI of a scheme the trainer reads, or a plain path.
DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
# s3:// names a bucket (S3's naming rules) and an optional key prefix.
S3_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
LOCATION_PATTERN = rf"^(pvc://{DNS1123_SUBDOMAIN}(/.*)?|s3://{S3_BUCKET}(/\S*)?|(hf|pkg)://\S+|[^:\s][^:]*)$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"  # a Secret's data key, as the apiserver admits it
# registry[:port]/path/to/repo:tag for output.push. The registry must be named (a dot, a port or localhost), as
# Docker requires of anything that is not Docker Hub; repository paths as the OCI distribution spec admits them.
_OCI_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
OCI_REFERENCE_PATTERN = (r"^(localhost(:[0-9]+)?|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+(:[0-9]+)?|[A-Za-z0-9-]+:[0-9]+)"
                         rf"/{_OCI_COMPONENT}(/{_OCI_COMPONENT})*:[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}$")
LAYER_SELECTOR_PATTERN = r"^(all|none|(last|first|every):[0-9]+|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)$"



class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields refused (a typo is an error, not a no-op)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True,
        validate_default=True,  # so enum defaults become plain strings too, like values that were given
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in YAML: camelCase, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True)
class Rule:
    """One cross-field rule, enforced by the apiserver (CEL) and by Python (check) with the same message."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field: str  # dotted path from the object the rule is attached to; names the field in local errors


class RuleViolation(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def enforce(obj: Any, rules: list[Rule]) -> None:
    for rule in rules:
        if not rule.check(obj):
            raise RuleViolation(rule.field, rule.message)


def rules_schema(rules: list[Rule]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": r.cel, "message": r.message} for r in rules]}


class SecretRef(ApiModel):
    """A Secret in the job's own namespace; its keys become the trainer's environment (e.g. HF_TOKEN)."""

    name: str = Field(min_length=1, max_length=253, pattern=f"^{DNS1123_SUBDOMAIN}$",
                      description="Name of a Secret in the FineTuneJob's namespace.")
