"""The API adapter's pure parts (kube.py): status patches and error mapping."""

from __future__ import annotations

import pytest
import yaml

from finetune_operator.kube import (Conflict, Kube, KubeError, NotConfigured, NotFound, Unavailable, _error,
                                    collection_path, default_namespace, merge_patch)


def test_merge_patch_turns_old_into_new():
    old = {"phase": "Running", "progress": {"step": 5, "etaSeconds": 10}, "metrics": {"trainLoss": 1.0},
           "conditions": [{"type": "Ready"}]}
    new = {"phase": "Succeeded", "progress": {"step": 9}, "metrics": {"trainLoss": 1.0},
           "conditions": [{"type": "Ready", "status": "True"}], "output": {"location": "/x"}}
    assert merge_patch(old, new) == {"phase": "Succeeded", "progress": {"step": 9, "etaSeconds": None},
                                     "conditions": [{"type": "Ready", "status": "True"}],
                                     "output": {"location": "/x"}}
    assert merge_patch(new, new) == {}


@pytest.mark.parametrize("status, kind", [
    (404, NotFound), (409, Conflict), (500, Unavailable), (503, Unavailable), (429, Unavailable), (0, Unavailable),
    (403, KubeError),
])
def test_errors_map_to_what_the_reconciler_does_next(status, kind):
    error = _error(status, b'{"kind":"Status","message":"jobs.batch is forbidden"}')
    assert type(error) is kind
    assert "jobs.batch is forbidden" in str(error)


def test_collections_in_a_namespace_and_across_all():
    assert collection_path("v1", "Pod", "ml") == "/api/v1/namespaces/ml/pods"
    assert collection_path("v1", "Pod", None) == "/api/v1/pods"
    assert collection_path("batch/v1", "Job", None) == "/apis/batch/v1/jobs"


def test_the_namespace_meant_is_the_kubeconfig_contexts(tmp_path):
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "team",
              "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
              "users": [{"name": "u", "user": {"token": "t"}}],
              "contexts": [{"name": "team", "context": {"cluster": "c", "user": "u", "namespace": "ml-team-a"}},
                           {"name": "plain", "context": {"cluster": "c", "user": "u"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    assert default_namespace(str(path)) == "ml-team-a"
    path.write_text(yaml.safe_dump({**config, "current-context": "plain"}))
    assert default_namespace(str(path)) == "default"


def test_no_kubeconfig_is_one_clear_error(tmp_path):
    with pytest.raises(NotConfigured, match="no cluster to talk to"):
        Kube.connect(str(tmp_path / "missing"))
