"""The Events a transition posts (events.py): about the FineTuneJob, stamped with the pass's clock, short."""

from datetime import datetime, timezone

from finetune_operator.events import MAX_MESSAGE, build_event

FTJ = {"metadata": {"name": "mrpc", "namespace": "ml", "uid": "u1", "resourceVersion": "7"}}


def test_an_event_is_about_the_finetunejob_at_the_passs_time():
    event = build_event(FTJ, "Warning", "Retrying", "attempt 1 failed", datetime(2025, 1, 1, tzinfo=timezone.utc),
                        "operator-0")
    assert event["metadata"] == {"generateName": "mrpc.", "namespace": "ml"}
    assert event["involvedObject"] == {"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "name": "mrpc",
                                       "namespace": "ml", "uid": "u1", "resourceVersion": "7"}
    assert (event["type"], event["reason"], event["count"]) == ("Warning", "Retrying", 1)
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2025-01-01T00:00:00Z"
    assert event["source"] == {"component": "finetune-operator", "host": "operator-0"}


def test_a_long_message_is_cut():
    event = build_event(FTJ, "Normal", "X", "m" * 5000, datetime(2025, 1, 1, tzinfo=timezone.utc), "h")
    assert len(event["message"]) == MAX_MESSAGE
