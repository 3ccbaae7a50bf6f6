"""The operator's own metrics (metrics.py): conventional names, a build-info series, namespaced counters that exist
at 0 from a namespace's first reconcile, and no *_created timestamp series."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY, generate_latest

from finetune_operator import metrics


def page() -> str:
    return generate_latest(REGISTRY).decode()


def test_names_labels_and_no_created_series():
    metrics.namespace_seen("team-a")
    metrics.RETRIES.labels("team-a").inc()
    text = page()
    assert "_created" not in text
    assert re.search(r'^finetune_operator_build_info\{python="[\d.]+",version="[^"]+"\} 1\.0$', text, re.M)
    # A namespace's series are there, at 0, before anything failed in it.
    assert 'finetune_operator_reconcile_total{namespace="team-a",result="error"} 0.0' in text
    assert 'finetune_operator_attempts_total{namespace="team-a"} 0.0' in text
    assert re.search(r'^finetune_operator_retries_total\{namespace="team-a"\} [1-9]', text, re.M)
    assert "restarts" not in text
    for phase in ("Pending", "Running", "Succeeded", "Failed"):
        assert f'finetune_operator_jobs{{phase="{phase}"}}' in text
