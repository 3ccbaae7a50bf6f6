"""The trainer's summary as the operator reads it (summary.py): what the trainer writes passes unchanged, what
does not fit the schema is dropped part by part."""

from finetune_operator.summary import read_summary


def test_a_summary_the_trainer_writes_passes_the_reader_unchanged():
    written = {"phase": "Failed", "reason": "InvalidData", "message": "dataset.source: no such file", "exitCode": 2,
               "field": "dataset.source", "startTime": "2026-11-28T20:00:00+00:00",
               "completionTime": "2026-11-28T20:01:00+00:00", "progress": {"step": 3, "totalSteps": 9, "epoch": 0.3},
               "metrics": {"trainLoss": 0.5}, "parameters": {"trainable": 1, "total": 2},
               "checkpoint": {"location": "/out/checkpoints/step-3", "step": 3}, "output": {"location": "/out"}}
    assert read_summary({**written, "metricsUrl": "http://127.0.0.1:9090/metrics"}) == written


def test_parts_that_do_not_fit_are_dropped_one_by_one():
    read = read_summary({"phase": "Exploded", "reason": "not a reason!", "message": "m" * 5000, "exitCode": "2",
                         "metrics": {"trainLoss": float("nan"), "evalF1": 0.5, "flag": True},
                         "progress": {"step": -1}, "checkpoint": {"location": "/c", "step": 3},
                         "startTime": "yesterday"})
    assert set(read) == {"message", "metrics", "checkpoint"}
    assert len(read["message"]) == 4096 and read["message"].endswith("…")
    assert read["metrics"] == {"evalF1": 0.5}


MODEL_DIGEST = "sha256:" + "a" * 64
ARTIFACT_DIGEST = "sha256:" + "b" * 64


def test_outputs_pass_each_checked_on_its_own():
    good = [{"kind": "model", "uri": "pvc://models/x/model", "digest": MODEL_DIGEST},
            {"kind": "oci", "uri": f"oci://r.example.com/t/m:v1@{ARTIFACT_DIGEST}", "digest": ARTIFACT_DIGEST}]
    bad = [{"kind": "tarball", "uri": "x", "digest": MODEL_DIGEST}, {"kind": "model", "uri": "x", "digest": "md5:1"},
           "not an object"]
    assert read_summary({"outputs": good + bad})["outputs"] == good
    assert "outputs" not in read_summary({"outputs": "everything"})


def test_status_lists_the_outputs_even_when_the_push_failed():
    from finetune_operator.status import status_from_summary

    model = {"kind": "model", "uri": "pvc://models/x/model", "digest": MODEL_DIGEST}
    failed = status_from_summary(read_summary({"phase": "Failed", "reason": "RegistryUnavailable",
                                               "outputs": [model]})).wire()
    assert failed["outputs"] == [model] and "output" not in failed
    artifact = {"kind": "oci", "uri": f"oci://r.example.com/t/m:v1@{ARTIFACT_DIGEST}", "digest": ARTIFACT_DIGEST}
    done = status_from_summary(read_summary({"phase": "Succeeded", "output": {"location": "pvc://models/x/model"},
                                             "outputs": [model, artifact]})).wire()
    assert done["outputs"] == [model, artifact]


def test_the_evaluation_and_usage_parts_are_checked_like_the_others():
    evaluation = {"split": "test", "finalModel": "best", "step": 12, "metrics": {"evalF1": 0.9}, "passed": True,
                  "gates": [{"metric": "eval_f1", "value": 0.9, "gate": ">= 0.8", "passed": True, "min": 0.8}]}
    read = read_summary({"phase": "Succeeded", "evaluation": evaluation, "usage": {"samples": 10, "tokens": 99}})
    assert read["evaluation"] == evaluation and read["usage"] == {"samples": 10, "tokens": 99}
    # JSON has no infinity: a status patch carrying one would be refused, so the block is dropped, not the summary.
    broken = {**evaluation, "metrics": {"evalPerplexity": float("inf")}}
    read = read_summary({"phase": "Succeeded", "evaluation": broken, "usage": {"samples": -1}})
    assert "evaluation" not in read and "usage" not in read and read["phase"] == "Succeeded"
