"""status.usage (usage.py) and its price table (pricing.py): requested resources x pod lifetimes summed over every
attempt, entries that never shrink, the work the trainer reported, the estimated cost, and the chargeback counters."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import REGISTRY

from finetune_operator import metrics
from finetune_operator.api import format_time
from finetune_operator.observed import Policy, observe
from finetune_operator.pricing import parse_prices, quantity
from finetune_operator.usage import next_usage
from test_lifecycle import ftj, job

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
T = lambda seconds: format_time(NOW + timedelta(seconds=seconds))  # noqa: E731
PRICES = parse_prices(json.dumps({
    "currency": "EUR", "default": {"gpuHour": 2.0, "cpuCoreHour": 0.05, "memoryGibHour": 0.01},
    "nodeSelectors": [{"nodeSelector": {"gpu": "h100"}, "gpuHour": 8.0}]}))


def pod(attempt, started, finished=None, summary=None, gpus="1", cpu="4", memory="16Gi", index=0):
    state = ({"terminated": {"exitCode": 0 if summary else 75, "startedAt": T(started), "finishedAt": T(finished),
                             "message": json.dumps(summary) if summary else ""}}
             if finished is not None else {"running": {"startedAt": T(started)}})
    amounts = {"cpu": cpu, "memory": memory, "nvidia.com/gpu": gpus}
    return {"metadata": {"name": f"mrpc-a{attempt}-{index}", "labels": {"finetune.io/attempt": str(attempt)},
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
            "spec": {"containers": [{"name": "trainer", "resources": {"requests": amounts, "limits": amounts}}]},
            "status": {"phase": "Running" if finished is None else "Succeeded", "containerStatuses": [
                {"name": "trainer", "state": state}]}}


def usage(status, jobs, pods, prices=PRICES, scraped=None, completion=None, **spec):
    o = replace(observe(ftj(status, **spec), jobs, pods, NOW, scraped), policy=Policy(prices=prices))
    return next_usage(o, completion)


def test_quantities():
    assert [quantity(q) for q in ("2", "500m", "16Gi", "1e3", "1.5", "bogus")] == [2, 0.5, 16 * 2**30, 1000, 1.5, 0]


def test_two_attempts_sum_every_pods_lifetime_times_its_requests():
    status = {"phase": "Running", "attempts": 2, "startTime": T(-7300)}
    pods = [pod(1, -7200, -3600), pod(2, -1800)]  # attempt 1 ran an hour and failed; attempt 2 runs for 30 min
    out = usage(status, [job(1, failed="PodFailurePolicy"), job(2)], pods,
                scraped={"usage": {"samples": 64, "tokens": 6400}})
    assert out["attempts"] == [
        {"attempt": 1, "seconds": 3600.0, "gpuHours": 1.0, "cpuCoreHours": 4.0, "memoryGibHours": 16.0},
        {"attempt": 2, "seconds": 1800.0, "gpuHours": 0.5, "cpuCoreHours": 2.0, "memoryGibHours": 8.0,
         "samples": 64, "tokens": 6400}]
    assert (out["gpuHours"], out["cpuCoreHours"], out["memoryGibHours"]) == (1.5, 6.0, 24.0)
    assert (out["samples"], out["tokens"], out["wallSeconds"]) == (64, 6400, 7300)
    assert out["estimatedCost"] == {"amount": round(1.5 * 2 + 6 * 0.05 + 24 * 0.01, 4), "currency": "EUR"}


def test_a_gang_counts_every_pod_and_the_summary_settles_the_work_done():
    status = {"phase": "Running", "attempts": 1, "startTime": T(-3700)}
    done = {"phase": "Succeeded", "usage": {"samples": 1000, "tokens": 90000, "mfu": 0.41}}
    out = usage(status, [job(1, complete=True)], [pod(1, -3600, 0, done, gpus="8"), pod(1, -3600, 0, gpus="8",
                                                                                          index=1)],
                resources={"nodeSelector": {"gpu": "h100", "zone": "a"}}, completion=T(0))
    assert out["gpuHours"] == 16.0 and out["mfu"] == 0.41 and out["tokens"] == 90000
    assert out["estimatedCost"]["amount"] == round(16 * 8.0 + 8 * 0.05 + 32 * 0.01, 4)  # the h100 GPU price


def test_an_attempt_whose_pods_are_gone_keeps_its_entry_and_nothing_shrinks():
    before = {"phase": "Running", "attempts": 2, "startTime": T(-7300), "usage": {"attempts": [
        {"attempt": 1, "seconds": 3600.0, "gpuHours": 1.0, "cpuCoreHours": 4.0, "memoryGibHours": 16.0,
         "tokens": 500}]}}
    out = usage(before, [job(1, failed="PodFailurePolicy"), job(2)], [pod(2, -60)])
    assert out["attempts"][0]["gpuHours"] == 1.0 and out["attempts"][0]["tokens"] == 500
    assert out["gpuHours"] == round(1.0 + 60 / 3600, 6)


def test_without_a_price_table_there_is_no_cost_and_a_bad_table_names_the_problem():
    out = usage({"phase": "Running", "attempts": 1, "startTime": T(-10)}, [job(1)], [pod(1, -10)], prices=None)
    assert "estimatedCost" not in out and out["gpuHours"] > 0
    assert parse_prices("") is None
    with pytest.raises(ValueError, match="gpuHour"):
        parse_prices('{"default": {"gpuHour": -1}}')


def test_usage_counters_grow_by_what_status_grew_by():
    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    gpu0 = value("finetune_operator_requested_gpu_seconds_total", namespace="chargeback")
    cost0 = value("finetune_operator_estimated_cost_total", namespace="chargeback", currency="EUR")
    metrics.count_usage("chargeback", None, {"gpuHours": 0.5, "estimatedCost": {"amount": 1.0, "currency": "EUR"}})
    metrics.count_usage("chargeback", {"gpuHours": 0.5, "estimatedCost": {"amount": 1.0, "currency": "EUR"}},
                        {"gpuHours": 0.75, "estimatedCost": {"amount": 1.5, "currency": "EUR"}})
    assert value("finetune_operator_requested_gpu_seconds_total", namespace="chargeback") - gpu0 == 0.75 * 3600
    assert value("finetune_operator_estimated_cost_total", namespace="chargeback", currency="EUR") - cost0 == 1.5
