"""Notifications (notify/) against a real HTTP receiver on localhost: every transition a pass posts an Event for is
delivered once per key, a receiver that fails first still gets it, one that hangs neither holds up a pass nor
other sinks nor grows memory, the signature verifies, and both encoders produce what their receivers parse."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from cloudevents.core.bindings import http as ce_http

from api_objects import NOW, NS, SUMMARY, ftj, job, pod, synced, terminated
from finetune_operator import metrics
from finetune_operator.notify.delivery import Notifier, Policy
from finetune_operator.notify.encoders import EVENT_TYPE, cloudevent, slack
from finetune_operator.notify.notice import Notice, build_notice, notice_id
from finetune_operator.notify.sinks import CLUSTER, Sink, SinkConfigError, cluster_sinks, read_key
from finetune_operator.notify.signing import SIGNATURE_HEADER, signature, verify
from finetune_operator.reconciler import Reconciler
from finetune_operator.scrape import Scraper
from finetune_operator.settings import Settings
from notify_receiver import Receiver
from test_reconciler import FakeKube

KEY = b"an-hmac-key-from-a-secret"
FAST = Policy(queue_size=100, max_tries=4, first_backoff=0.05, timeout=0.5)


def notice(n: int = 0, **overrides) -> Notice:
    fields = dict(id=notice_id("uid-1", 1, 1, "Succeeded", f"Reason{n}"), namespace=NS, name="mrpc", uid="uid-1",
                  phase="Succeeded", reason=f"Reason{n}", message="training finished", severity="Normal",
                  time="2025-01-01T12:00:00Z", attempt=1, metrics={"evalF1": 0.91, "trainLoss": 0.2},
                  outputs={"model": "pvc://ckpt/mrpc/model"})
    return Notice(**{**fields, **overrides})


def counter(result: str, namespace: str = NS) -> float:
    return metrics.NOTIFICATIONS.labels(namespace, result)._value.get()


class GiveUps(list):
    def __call__(self, notice, sink, tries, error):
        self.append((notice.id, sink, tries, error))


# ------------------------------------------------------------------------------- through the reconciler

def reconciler(kube: FakeKube, children, **settings) -> Reconciler:
    return Reconciler(kube, Settings(trainer_image="img", **settings), Scraper(9090, 1.0, min_interval=15), children,
                      clock=lambda: NOW)


def test_every_transition_of_a_job_is_delivered_once_per_key_signed(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")  # as a Secret's file often ends
    with Receiver() as admin, Receiver() as own:
        body = ftj(status=None)
        body["metadata"].update(uid="uid-1", generation=1)
        body["spec"]["notify"] = {"sinks": [{"url": own.url, "format": "slack"}]}
        kube, children = FakeKube(body), synced()
        r = reconciler(kube, children, notify_sinks=json.dumps([{"url": admin.url}]),
                       notify_signing_key_file=str(key_file), notify_first_backoff=0.05)
        r.reconcile(NS, "mrpc")  # AttemptCreated: a routine step, no Event, but a new phase: a notice (events.py)
        unscheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                       "message": "0/1 nodes are available"}
        children.seed([job(rv=200)], [pod(rv=201, phase="Pending", ready=False, scheduled=unscheduled)])
        r.reconcile(NS, "mrpc")  # Unschedulable (a Warning)
        children.seed([], [pod(rv=202)])
        r.reconcile(NS, "mrpc")  # Running, after a Warning
        r.reconcile(NS, "mrpc")  # nothing changed: no Event, no notice
        children.seed([job(complete=True, rv=300)], [pod(phase="Succeeded", state=terminated(0, SUMMARY), rv=301)])
        r.reconcile(NS, "mrpc")  # Succeeded
        events = [e["reason"] for e in kube.events]
        got = admin.wait(len(events) + 1)
        own.wait(len(events) + 1)
        time.sleep(0.2)  # nothing more arrives
        assert len(admin.received) == len(own.received) == len(events) + 1 == 4
        assert [r.json()["data"]["reason"] for r in got] == ["AttemptCreated", *events]  # in order: the phase, the Events
        assert len({r.key for r in got}) == 4
        for received in got + own.received:
            assert verify(KEY, received.body, received.headers[SIGNATURE_HEADER.lower()])
        last = got[-1].json()
        assert last["data"]["phase"] == "Succeeded" and last["data"]["finetunejob"]["uid"] == "uid-1"
        assert last["data"]["outputs"]["model"] == json.loads(SUMMARY)["output"]["location"]
        assert last["data"]["metrics"] and all(k == "trainLoss" or k.startswith("eval") for k in last["data"]["metrics"])
        r.notifications.stop()


def test_a_pass_retried_after_a_failed_event_post_sends_the_same_key():
    """The status patch went through and the Event POST failed: the next pass sees no transition, so the notice
    was queued before the POST; a pass that repeats a transition (a conflict before the patch) repeats its id."""
    body = ftj(status=None)
    body["metadata"].update(uid="uid-2", generation=3)
    status = {"phase": "Running", "attempts": 2}
    first = build_notice(body, status, ("Warning", "Retrying", "attempt 1 failed"), NOW)
    again = build_notice(body, status, ("Warning", "Retrying", "attempt 1 failed"), NOW)
    other = build_notice(body, {**status, "attempts": 3}, ("Warning", "Retrying", "attempt 2 failed"), NOW)
    assert first.id == again.id != other.id


def test_a_sink_that_gives_up_becomes_a_warning_event_on_the_job():
    with Receiver(default=404) as gone:
        body = ftj(status=None)
        body["metadata"]["uid"] = "uid-3"
        body["spec"]["runPolicy"]["suspend"] = True  # created Suspended: a transition with an Event and a notice
        kube = FakeKube(body)
        r = reconciler(kube, synced(), notify_sinks=json.dumps([{"url": gone.url}]))
        r.reconcile(NS, "mrpc")
        deadline = time.monotonic() + 5
        while not any(e["reason"] == "NotificationFailed" for e in kube.events):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        [failed] = [e for e in kube.events if e["reason"] == "NotificationFailed"]
        assert len(gone.received) == 1  # a 404 is not retried
        assert failed["type"] == "Warning" and failed["involvedObject"]["uid"] == "uid-3"
        assert "HTTP 404" in failed["message"] and "1 tries" in failed["message"]
        assert "secret-in-url" not in failed["message"]  # the URL's path and query may hold a token


# ------------------------------------------------------------------------------- delivery

def test_a_receiver_that_answers_500_then_200_gets_the_event_once_delivered():
    ns = "flaky-sink"  # its own label: other tests' notifiers may still be counting deliveries for NS
    before = (counter("delivered", ns), metrics.NOTIFICATION_RETRIES.labels(ns)._value.get())
    with Receiver(script=[500, 503]) as flaky:
        gave_up = GiveUps()
        notifier = Notifier(FAST, KEY, gave_up)
        notifier.submit(notice(namespace=ns), (Sink(flaky.url, "cloudevents", CLUSTER),))
        [delivered] = flaky.wait(1)
        assert flaky.answered == [500, 503, 200]
        assert {r.key for r in flaky.received} == {notice().id}  # the same key on every try
        assert not gave_up
    deadline = time.monotonic() + 5  # the notifier counts after it has read the answer the receiver sent
    while counter("delivered", ns) < before[0] + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counter("delivered", ns) == before[0] + 1
    assert metrics.NOTIFICATION_RETRIES.labels(ns)._value.get() == before[1] + 2


def test_retries_back_off_and_give_up_after_the_bound():
    with Receiver(default=500) as down:
        gave_up = GiveUps()
        Notifier(FAST, None, gave_up).submit(notice(), (Sink(down.url, "cloudevents", CLUSTER),))
        got = down.wait(FAST.max_tries, delivered=False)
        deadline = time.monotonic() + 5
        while not gave_up:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gaps = [b.at - a.at for a, b in zip(got, got[1:])]
        assert all(gap >= FAST.backoff(i + 1) * 0.9 for i, gap in enumerate(gaps)), gaps  # 0.05, 0.1, 0.2 s
        assert gave_up[0][2] == FAST.max_tries and "HTTP 500" in gave_up[0][3]
        time.sleep(0.3)
        assert len(down.received) == FAST.max_tries


def test_a_hanging_sink_holds_up_neither_the_caller_nor_another_sink():
    policy = Policy(queue_size=100, max_tries=2, first_backoff=0.05, timeout=1.0)
    with Receiver(hang=True) as stuck, Receiver() as healthy:
        notifier = Notifier(policy, KEY, GiveUps())
        sinks = (Sink(stuck.url, "cloudevents", CLUSTER), Sink(healthy.url, "slack", CLUSTER))
        started = time.perf_counter()
        for n in range(50):
            notifier.submit(notice(n), sinks)
        submitting = time.perf_counter() - started
        assert submitting < 0.1, f"50 submits took {submitting:.3f}s"
        got = healthy.wait(50, timeout=5)
        assert [r.key for r in got] == [notice(n).id for n in range(50)]  # in order, none lost
        assert len(stuck.received) <= 2  # still on its first notice
        notifier.stop()


def test_a_dead_sinks_backlog_is_bounded_by_dropping_the_oldest():
    policy = Policy(queue_size=5, max_tries=2, first_backoff=0.05, timeout=2.0)
    dropped_before = counter("dropped")
    with Receiver(hang=True) as stuck:
        notifier = Notifier(policy, None, GiveUps())
        sink = (Sink(stuck.url, "cloudevents", CLUSTER),)
        notifier.submit(notice(0), sink)
        stuck.wait(1, delivered=False)  # in flight
        for n in range(1, 50):
            notifier.submit(notice(n), sink)
        # One in flight, queue_size waiting (the newest), the rest dropped and counted.
        assert notifier.pending() == policy.queue_size
        assert counter("dropped") - dropped_before == 50 - 1 - policy.queue_size
        notifier.stop()


def test_a_refused_connection_is_retried_like_a_5xx():
    gave_up = GiveUps()
    Notifier(FAST, None, gave_up).submit(notice(), (Sink("http://127.0.0.1:9/closed", "cloudevents", CLUSTER),))
    deadline = time.monotonic() + 5
    while not gave_up:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert gave_up[0][2] == FAST.max_tries and "refused" in gave_up[0][3].lower()


# ------------------------------------------------------------------------------- encoders and signing

def test_the_cloudevent_is_structured_mode_and_parses_with_the_sdk():
    encoded = cloudevent(notice())
    assert encoded.headers["content-type"] == "application/cloudevents+json"
    event = ce_http.from_http_event(ce_http.HTTPMessage(encoded.headers, encoded.body))
    assert event.get_id() == notice().id and event.get_type() == EVENT_TYPE
    assert event.get_source() == f"/apis/finetune.io/v1alpha1/namespaces/{NS}/finetunejobs/mrpc"
    assert event.get_subject() == f"{NS}/mrpc"
    data = event.get_data()
    assert data["phase"] == "Succeeded" and data["metrics"]["evalF1"] == 0.91
    assert data["finetunejob"] == {"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "namespace": NS,
                                   "name": "mrpc", "uid": "uid-1"}
    assert cloudevent(notice()).body == encoded.body  # deterministic: a retry sends the same bytes


def test_the_slack_message_has_text_and_blocks_with_metrics_and_outputs():
    body = json.loads(slack(notice()).body)
    assert body["text"].startswith(":white_check_mark: FineTuneJob")
    assert f"*{NS}/mrpc* is Succeeded (Reason0)" in body["text"]
    section, fields, context = body["blocks"]
    assert section["text"]["type"] == "mrkdwn" and "training finished" in section["text"]["text"]
    texts = [f["text"] for f in fields["fields"]]
    assert "*evalF1*\n0.91" in texts and "*model*\n`pvc://ckpt/mrpc/model`" in texts
    assert "uid uid-1" in context["elements"][0]["text"]
    warning = json.loads(slack(notice(phase="Running", severity="Warning", reason="Retrying")).body)
    assert warning["text"].startswith(":warning:")


def test_the_signature_verifies_and_a_changed_body_or_key_does_not():
    body = cloudevent(notice()).body
    header = signature(KEY, body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify(KEY, body, header)
    assert not verify(KEY, body.replace(b"Succeeded", b"Failed"), header)
    assert not verify(b"another key", body, header)
    assert not verify(KEY, body, None)


# ------------------------------------------------------------------------------- configuration

def test_the_admins_sinks_are_checked_and_a_bad_one_names_the_setting(tmp_path):
    assert cluster_sinks("") == ()
    [sink] = cluster_sinks('[{"url": "https://hooks.example/x", "format": "slack"}]')
    assert (sink.format, sink.origin, sink.display) == ("slack", CLUSTER, "https://hooks.example (slack)")
    for bad in ('{"url": "x"}', '[{"url": "ftp://x"}]', '[{"url": "http://x", "format": "teams"}]', "not json"):
        with pytest.raises(SinkConfigError, match="FINETUNE_NOTIFY_SINKS"):
            cluster_sinks(bad)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SinkConfigError, match="empty"):
        read_key(str(empty))
    assert read_key("") is None


def test_job_sinks_are_ignored_when_the_admin_turns_them_off():
    with Receiver() as own:
        body = ftj(status=None)
        body["spec"]["notify"] = {"sinks": [{"url": own.url}]}
        r = reconciler(FakeKube(body), synced(), notify_job_sinks=False)
        r.reconcile(NS, "mrpc")
        time.sleep(0.3)
        assert own.received == []


def test_the_spec_refuses_a_sink_that_is_not_http():
    from pydantic import ValidationError

    from finetune_operator.api import NotifySpec

    with pytest.raises(ValidationError, match="url"):
        NotifySpec.model_validate({"sinks": [{"url": "file:///etc/passwd"}]})
    with pytest.raises(ValidationError, match="format"):
        NotifySpec.model_validate({"sinks": [{"url": "http://x", "format": "teams"}]})


def test_the_verification_example_in_the_docs_verifies_a_signed_notification():
    page = (Path(__file__).resolve().parents[2] / "docs" / "notifications.md").read_text()
    [code] = re.findall(r"```python\n(.*?)```", page, re.S)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the page's own example
    body = cloudevent(notice()).body
    assert namespace["verified"](KEY, body, signature(KEY, body))
    assert not namespace["verified"](KEY, body + b" ", signature(KEY, body))


def test_sinks_with_work_at_once_are_bounded():
    dropped_before = counter("dropped")
    with Receiver(hang=True) as stuck:
        notifier = Notifier(Policy(max_sinks=2, timeout=2.0, max_tries=1), None, GiveUps())
        for n in range(3):  # three sinks (the same server under three paths), one more than allowed
            notifier.submit(notice(), (Sink(f"{stuck.url}&sink={n}", "cloudevents", CLUSTER),))
        stuck.wait(2, delivered=False)
        assert counter("dropped") - dropped_before == 1
        notifier.stop()


def test_notification_settings_parse_from_the_environment_and_a_bad_one_names_its_variable():
    settings = Settings.from_env({"FINETUNE_NOTIFY_JOB_SINKS": "false", "FINETUNE_NOTIFY_TIMEOUT": "2.5"})
    assert settings.notify_job_sinks is False and settings.notify_timeout == 2.5
    with pytest.raises(ValueError, match="FINETUNE_NOTIFY_JOB_SINKS: 'maybe' is not a boolean"):
        Settings.from_env({"FINETUNE_NOTIFY_JOB_SINKS": "maybe"})
