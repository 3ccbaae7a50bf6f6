"""The chart's dashboard on data a real Prometheus scraped from a real trainer process and the operator's metrics
on this machine (no cluster): every PromQL expression, its variables substituted, gives a non-empty, plausible
result while the job runs and over its run once it has finished; only the GPU panels are empty (a CPU run, no
dcgm-exporter) and say why. tests/e2e/test_prometheus.py does the same on the real node through the chart's
monitors.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from helm_chart import require_tool
from ports import free_ports
from prometheus_client import REGISTRY, start_http_server
from prometheus_live import Prometheus, bin_dir, check_dashboard

def _trainer_config(tmp_path: Path, port: int) -> Any:
    from finetune_trainer.config import TrainerConfig
    from finetune_trainer.tasks.base import get_task
    from tiny_models import save_tiny_model, sentiment_rows, write_rows

    model = save_tiny_model("bert", get_task("sequence-classification").auto_model, tmp_path / "model",
                            num_labels=2)
    write_rows(sentiment_rows(6000, seed=3), tmp_path / "data" / "train.jsonl")
    write_rows(sentiment_rows(8, seed=4), tmp_path / "data" / "validation.jsonl")
    return TrainerConfig.model_validate({
        "name": "scraped", "model": {"source": str(model)}, "task": "sequence-classification",
        "dataset": {"source": str(tmp_path / "data"), "maxLength": 32}, "strategy": {"type": "full"},
        "training": {"epochs": 1, "batchSize": 2, "learningRate": 1e-3, "logEvery": 1, "evalEvery": 50,
                     "saveEvery": 200},
        "output": {"location": str(tmp_path / "out")}, "metricsPort": port})


def test_every_dashboard_query_on_a_scraped_trainer_and_operator(tmp_path: Path) -> None:
    import torch
    from finetune_trainer.train import run

    from finetune_operator import metrics

    binary = require_tool(bin_dir() / "prometheus", "tools/prometheus/build.sh")
    trainer_port, operator_port = free_ports(2)
    config = _trainer_config(tmp_path, trainer_port)
    server, _ = start_http_server(operator_port, addr="127.0.0.1", registry=REGISTRY)
    metrics.namespace_seen("ml")
    metrics.ATTEMPTS.labels("ml").inc()
    metrics.count_usage("ml", None, {"gpuHours": 0.5, "cpuCoreHours": 2.0, "memoryGibHours": 4.0,
                                     "estimatedCost": {"amount": 1.25, "currency": "EUR"}})  # a status write
    metrics.FINETUNEJOBS.observe("ml/scraped", "Running")
    stop = threading.Event()

    def reconciles() -> None:  # what the operator's poller does while the job runs
        while not stop.wait(0.2):
            metrics.RECONCILES.labels("ml", "success").inc()
            metrics.RECONCILE_SECONDS.observe(0.02)

    # As the chart's monitors label them: the target's namespace and pod; honorLabels for the operator only.
    (tmp_path / "prometheus").mkdir()
    prom = Prometheus(binary, tmp_path / "prometheus", [
        {"job_name": "trainers", "scrape_interval": "1s", "scrape_timeout": "1s", "static_configs": [
            {"targets": [f"127.0.0.1:{trainer_port}"], "labels": {"namespace": "ml", "pod": "scraped-a1-x2k9q"}}]},
        {"job_name": "finetune-operator", "honor_labels": True, "scrape_interval": "1s", "scrape_timeout": "1s",
         "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"], "labels": {"namespace": "finetune-system"}}]},
    ])
    threads = [threading.Thread(target=reconciles), threading.Thread(target=run, args=(config,))]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.time() - 2
    try:
        for thread in threads:
            thread.start()
        sel = 'namespace="ml", finetunejob="scraped"'
        deadline = time.monotonic() + 240
        # Two checkpoints: the save-time histogram's series appears with the first, so only the second is an
        # increase a rate() window can see (on a loaded machine 200 steps can outlast a 10 s window).
        while not (prom.query(f"finetune_trainer_checkpoints_total{{{sel}}} > 1")
                   and prom.query(f"finetune_trainer_eval_metric{{{sel}}}")
                   and prom.query(f"rate(finetune_trainer_tokens_total{{{sel}}}[10s]) > 0")
                   and prom.query('rate(finetune_operator_reconcile_total{namespace="ml"}[10s]) > 0')):
            assert threads[1].is_alive() and time.monotonic() < deadline, "no checkpoint and evaluation scraped"
            time.sleep(0.5)
        time.sleep(5)  # a few more scrapes: a range query's steps lie before now, each needs two samples in its window
        variables = {"namespace": "ml", "finetunejob": "scraped", "__rate_interval": "10s", "__range": "15m"}
        running = check_dashboard(prom, variables, start, time.time())
        assert threads[1].is_alive(), "the run finished before the running checks"
        assert 0 < max(running["Progress"]) < 1 and max(running["Step"]) > 0
        assert max(running["Tokens per second"]) > 0 and max(running["Checkpoints written"]) >= 1

        threads[1].join(timeout=600)
        last = max(t for s in prom.query_range(f"finetune_trainer_step{{{sel}}}", start, time.time(), 1)
                   for t, _ in s["values"])
        finished = check_dashboard(prom, variables, start, last)
        # The last scrape before the endpoint closed: near the end (a tiny model takes ~100 steps a scrape interval).
        assert max(running["Progress"]) < max(finished["Progress"]) <= 1 and max(finished["Progress"]) > 0.9
        assert max(running["Step"]) < max(finished["Step"]) <= 3000
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=600)
        torch.set_num_threads(previous)
        prom.stop()
        server.shutdown()
        server.server_close()
