"""The Helm chart under test: where it is, the helm binary tools/k8s builds, and `helm template` as parsed objects.

Shared by tests/chart/test_chart.py and tests/cluster/test_chart_cluster.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "finetune-operator"
ALL_ON = REPO / "tests" / "chart" / "values-all-on.yaml"
RELEASE, NAMESPACE = "fto", "finetune-system"  # fixed, so rendered names are stable (golden files)


def tool_bin_dir(tool: str, env_var: str) -> Path:
    """The folder tools/<tool>/build.sh builds into (it prints it and builds nothing), or the folder ``env_var``
    names instead."""
    env_bin = os.environ.get(env_var)
    if env_bin:
        return Path(env_bin)
    build = REPO / "tools" / tool / "build.sh"
    return Path(subprocess.run([str(build), "--print-bin-dir"], capture_output=True, text=True,
                               check=True).stdout.strip())


def helm_binary() -> Path:
    """tools/k8s's helm; skip the test when it is not built, unless FTO_REQUIRE_CLUSTER says it must be."""
    return require_tool(tool_bin_dir("k8s", "FTO_K8S_BIN") / "helm", "tools/k8s/build.sh")


def require_tool(path: Path, build: str) -> Path:
    """``path`` if it is built; else skip the test, or fail it when FTO_REQUIRE_CLUSTER says every tool must be."""
    if not path.exists():
        message = f"{path.name} is not built ({path}); run {build}"
        if os.environ.get("FTO_REQUIRE_CLUSTER", "").strip().lower() in {"1", "true", "yes", "on"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def helm(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, timeout=120, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout[-2000:]}")
    return proc


def template_args(*values: str | Path, sets: tuple[str, ...] = (), release: str = RELEASE,
                  namespace: str = NAMESPACE) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


def render_text(*values: str | Path, sets: tuple[str, ...] = (), **kw: str) -> str:
    return helm(*template_args(*values, sets=sets, **kw)).stdout


def render(*values: str | Path, sets: tuple[str, ...] = (), **kw: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(*values, sets=sets, **kw)) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
