"""Reading FineTuneJob manifests (manifest.py): every problem is one line naming the file and the field."""

import pytest
import yaml

from finetune_operator.manifest import ManifestError, load_finetunejob, parse_finetunejob

GOOD = yaml.safe_dump({"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "demo"},
                       "spec": {"model": {"source": "/models/bert"}, "task": "sequence-classification",
                                "dataset": {"source": "/data/reviews"}, "strategy": {"type": "full"}}})


def refusal(document) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_finetunejob(document, "job.yaml")
    return str(caught.value)


def test_not_a_finetunejob():
    assert "not a FineTuneJob" in refusal({"apiVersion": "apps/v1", "kind": "Deployment"})
    assert "not a Kubernetes object" in refusal(["a", "list"])


def test_a_refusal_lists_every_problem_one_line_each_naming_the_file_and_the_field():
    message = refusal({"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x"},
                       "spec": {"task": "sequence-classification"}})
    assert message.splitlines() == ["job.yaml: spec.model: Field required", "job.yaml: spec.dataset: Field required",
                                    "job.yaml: spec.strategy: Field required"]


def test_yaml_problems_and_missing_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML at line"):
        load_finetunejob(broken)
    with pytest.raises(ManifestError, match="no such file"):
        load_finetunejob(tmp_path / "missing.yaml")


def test_the_finetunejob_of_a_multi_document_file_and_only_one(tmp_path):
    path = tmp_path / "jobs.yaml"
    path.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: ml}\n---\n" + GOOD)
    assert load_finetunejob(path).metadata.name == "demo"
    path.write_text(GOOD + "---\n" + GOOD)
    with pytest.raises(ManifestError, match="holds 2 FineTuneJobs"):
        load_finetunejob(path)
