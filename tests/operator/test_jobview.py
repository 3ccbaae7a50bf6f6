"""What `finetune get`, `describe` and `logs` show (jobview.py), from objects as the API returns them."""

from __future__ import annotations

from datetime import datetime, timezone

from finetune_operator.jobview import describe, duration, log_sources, progress_bar, table

NOW = datetime(2026, 1, 2, 12, 0, 0, tzinfo=timezone.utc)


def ftj(name: str, namespace: str = "ml", **status) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "creationTimestamp": "2026-01-02T11:00:00Z"},
            "spec": {"model": {"source": "hf://org/bert"}, "task": "sequence-classification",
                     "dataset": {"source": "pvc://data/reviews"}, "strategy": {"type": "partial", "layers": "last:2"},
                     "resources": {"gpus": 1}},
            "status": status}


def pod(name: str, attempt: int, rank: int | None = None, created: str = "2026-01-02T11:00:00Z",
        phase: str = "Failed") -> dict:
    annotations = {} if rank is None else {"batch.kubernetes.io/job-completion-index": str(rank)}
    return {"metadata": {"name": name, "labels": {"finetune.io/job": "j", "finetune.io/attempt": str(attempt)},
                         "annotations": annotations, "creationTimestamp": created}, "status": {"phase": phase}}


def test_progress_bar_from_status():
    assert progress_bar(None) == "-" and progress_bar({"step": 0}) == "-"
    assert progress_bar({"step": 80, "totalSteps": 200, "percent": 40.0, "etaSeconds": 200}) == \
        "[########------------]  40% step 80/200 ETA 3m20s"
    assert progress_bar({"step": 200, "totalSteps": 200, "percent": 100.0, "etaSeconds": 0}) == \
        "[####################] 100% step 200/200"


def test_durations_read_like_kubectl_ages():
    assert [duration(s) for s in (5, 200, 3600, 7500, 90000, 30 * 86400)] == ["5s", "3m20s", "1h", "2h5m", "1d1h",
                                                                            "30d"]


def test_table_has_a_row_per_job_sorted_with_reason_and_loss():
    running = ftj("b", phase="Running", attempts=2, progress={"step": 5, "totalSteps": 10, "percent": 50.0},
                  metrics={"trainLoss": 0.51234}, conditions=[{"type": "Ready", "status": "False",
                                                               "reason": "Training", "message": "attempt 2"}])
    text = table([running, ftj("a")], NOW).splitlines()
    assert text[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "ATTEMPTS", "REASON", "AGE"]
    assert text[1].split() == ["a", "-", "-", "-", "0", "-", "1h"]
    assert text[2].split()[:2] == ["b", "Running"] and "[##########----------]  50% step 5/10" in text[2]
    assert text[2].split()[-4:] == ["0.5123", "2", "Training", "1h"]
    assert table([running], NOW, with_namespace=True).splitlines()[1].startswith("ml ")


def test_log_sources_every_attempt_in_order_ranks_in_order_gone_pods_said():
    pods = [pod("j-a3-x", 3, 1), pod("j-a1-b", 1, 0, created="2026-01-02T11:05:00Z"), pod("j-a3-y", 3, 0),
            pod("j-a1-a", 1, 0), pod("other", 0)]
    sources = log_sources(3, pods)
    assert [(s.attempt, s.rank, s.pod) for s in sources] == [
        (1, 0, "j-a1-a"), (1, 0, "j-a1-b"), (2, 0, None), (3, 0, "j-a3-y"), (3, 1, "j-a3-x")]
    assert sources[2].header("j") == "==> attempt 2 (j-a2): no pod, so no log (not created yet, or deleted) <=="
    assert sources[0].header("j") == "==> attempt 1, rank 0: pod j-a1-a (Failed) <=="
    # A pod of an attempt the status does not count yet (just created) is shown too.
    assert [s.attempt for s in log_sources(1, [pod("j-a2-z", 2, phase="Pending")])] == [1, 2]


def test_describe_shows_status_attempts_and_events():
    job = ftj("j", phase="Failed", attempts=2, parameters={"trainable": 1200, "total": 110000},
              checkpoint={"location": "pvc://ckpt/j/step-40", "step": 40},
              conditions=[{"type": "Ready", "status": "False", "reason": "InvalidLayerSelection",
                           "message": "last:30 asks for 30 blocks"}])
    events = [{"type": "Warning", "reason": "Failed", "message": "attempt 2 failed", "lastTimestamp":
               "2026-01-02T11:59:00Z"}, {"type": "Normal", "reason": "Created", "message": "attempt 1",
                                         "lastTimestamp": "2026-01-02T11:00:00Z"}]
    text = describe(job, [pod("j-a2-q", 2)], events, NOW)
    assert "Reason:     InvalidLayerSelection" in text and "Message:    last:30 asks for 30 blocks" in text
    assert "Parameters: 1,200 trainable of 110,000" in text and "Checkpoint: pvc://ckpt/j/step-40" in text
    assert "  1  j-a1  rank 0  no pod" in text and "  2  j-a2  rank 0  pod j-a2-q Failed" in text
    assert text.index("Created") < text.index("attempt 2 failed")  # events oldest first
