"""Read FineTuneJob manifests from YAML files, with errors a person can act on.

`finetune run`/`plan` and the tests load manifests through ``load_finetunejob``; a ``ManifestError`` has one line
per problem, each naming the file and the field (all of them, as `kubectl apply` lists them), never a traceback.
(A "manifest" is always such a file; what a strategy trains is its trainable set.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from finetune_operator.api import API_VERSION, KIND, FineTuneJob


class ManifestError(ValueError):
    pass


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not str(part).startswith("function-") and part not in ("str", "int", "list[str]"):
            path += f".{part}" if path else str(part)
    return path


def _problem(error: Any) -> str:
    field = _field_path(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field (check the spelling; fields are camelCase)"
    got = error.get("input")
    detail = f"{field}: {message}" if field else message
    if error["type"] not in ("missing", "extra_forbidden", "value_error") and not isinstance(got, (dict, list)):
        detail += f" (got {got!r})"
    return detail


def validation_problems(error: ValidationError) -> list[str]:
    """Every problem, each as "field: what is wrong (got X)", in the order of the manifest."""
    return list(dict.fromkeys(_problem(e) for e in error.errors()))


def describe_validation_error(error: ValidationError) -> str:
    """Every problem on one line (a status message)."""
    return "; ".join(validation_problems(error))


def parse_finetunejob(document: Any, origin: str = "manifest") -> FineTuneJob:
    if not isinstance(document, dict):
        raise ManifestError(f"{origin}: not a Kubernetes object (expected a mapping with apiVersion and kind)")
    kind, api_version = document.get("kind"), document.get("apiVersion")
    if kind != KIND or api_version != API_VERSION:
        raise ManifestError(
            f"{origin}: not a FineTuneJob (apiVersion: {api_version!r}, kind: {kind!r}); "
            f"expected apiVersion: {API_VERSION}, kind: {KIND}")
    try:
        # Strict, as the apiserver's schema is: "2" is not an integer, "yes" not a boolean (YAML dates become strings).
        return FineTuneJob.model_validate_json(json.dumps(document, default=str), strict=True)
    except ValidationError as error:
        raise ManifestError("\n".join(f"{origin}: {problem}" for problem in validation_problems(error))) from None


def load_finetunejob(path: str | Path) -> FineTuneJob:
    """The one FineTuneJob in a YAML file (other kinds in a multi-document file are skipped)."""
    path = Path(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ManifestError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    ftjs = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if len(ftjs) > 1:
        raise ManifestError(f"{path}: holds {len(ftjs)} FineTuneJobs; put one per file")
    return parse_finetunejob(ftjs[0] if ftjs else (documents[0] if documents else None), str(path))
