"""The chart as others consume it: packaged with `helm package`, and as a subchart of a platform chart (a
dependency through file://) that passes `global` values, which Helm gives every subchart and values.schema.json
must therefore accept."""

from __future__ import annotations

import tarfile
from pathlib import Path

import yaml

from helm_chart import CHART, find, helm, one

PARENT_VALUES = {
    "global": {"imageRegistry": "registry.example", "imagePullSecrets": [{"name": "regcred"}]},
    "finetune-operator": {"rbac": {"clusterWide": False}, "namespaces": ["ml-team-a"],
                          "operator": {"logLevel": "DEBUG"}},
}


def test_helm_package_holds_the_chart(tmp_path: Path) -> None:
    out = helm("package", str(CHART), "--destination", str(tmp_path)).stdout
    [archive] = tmp_path.glob("finetune-operator-*.tgz")
    assert str(archive) in out
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for part in ("Chart.yaml", "values.yaml", "values.schema.json", "templates/crd.yaml",
                 "templates/rbac-aggregated.yaml", "dashboards/finetune.json"):
        assert f"finetune-operator/{part}" in names, part
    # The package installs as the directory does.
    assert "kind: Deployment" in helm("template", "fto", str(archive)).stdout


def test_renders_as_a_subchart_with_global_values(tmp_path: Path) -> None:
    parent = tmp_path / "platform"
    parent.mkdir()
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "finetune-operator", "version": version, "repository": f"file://{CHART}"}],
    }))
    (parent / "values.yaml").write_text(yaml.safe_dump(PARENT_VALUES))
    helm("dependency", "update", str(parent))
    assert (parent / "charts" / f"finetune-operator-{version}.tgz").exists()
    objects = [d for d in yaml.safe_load_all(helm("template", "platform", str(parent), "--namespace", "infra").stdout)
               if d]
    deployment = one(objects, "Deployment")
    assert deployment["metadata"]["name"] == "platform-finetune-operator"
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FINETUNE_NAMESPACES"] == "ml-team-a" and env["FINETUNE_LOG_LEVEL"] == "DEBUG"  # the parent's values
    assert [r["metadata"]["namespace"] for r in find(objects, "Role")] == ["infra", "ml-team-a"]  # Lease, jobs
    assert one(objects, "CustomResourceDefinition")["metadata"]["name"] == "finetunejobs.finetune.io"
    # A parent's values for this chart are still checked against its schema.
    (parent / "bad.yaml").write_text(yaml.safe_dump({"finetune-operator": {"replica": 2}}))
    bad = helm("template", "platform", str(parent), "--values", str(parent / "bad.yaml"), check=False)
    assert bad.returncode != 0 and "additional properties 'replica' not allowed" in bad.stderr
