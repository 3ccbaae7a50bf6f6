"""Read a running trainer's progress from its Prometheus endpoint (rank 0's pod IP, port 9090).

Progress in the status is a convenience, never a reason to fail: an unreachable endpoint, a timeout or a
malformed page is logged at debug and the status keeps its last progress. Each job's trainer is read at most once
per ``min_interval`` however often reconciles run, so a busy job cannot turn the operator into a load generator.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from finetune_trainer.summary import metric_key

log = logging.getLogger(__name__)

PREFIX = "finetune_trainer_"
# Trainer gauges that make up status.progress and status.parameters, and those that are training metrics; a metric
# is named as in the trainer's summary (summary.metric_key: train_loss -> trainLoss), and the gauge labelled by
# metric names gives one metric per label value (finetune_trainer_eval_metric{metric="eval_rougeL"} -> evalRougeL).
# Nothing else reaches status.metrics: not counters, not *_created timestamps, not GPU memory or MFU.
PROGRESS_FIELDS = {
    "step": "step",
    "total_steps": "totalSteps",
    "epoch": "epoch",
    "progress_ratio": "percent",
    "eta_seconds": "etaSeconds",
}
PARAMETER_FIELDS = {"trainable_parameters": "trainable", "total_parameters": "total"}
METRIC_GAUGES = {"train_loss", "eval_loss", "learning_rate"}
# Counters of the work done so far (status.usage of the running attempt); the summary settles them at exit.
USAGE_COUNTERS = {"samples": "samples", "tokens": "tokens"}
METRIC_LABEL = "metric"
LABELLED_METRICS = "eval_metric"
_INTEGER_FIELDS = {"step", "totalSteps", "etaSeconds"}
_SCALE = {"percent": 100.0}  # status.progress.percent is 0-100, the gauge a 0-1 ratio


def parse_trainer_metrics(text: str) -> dict[str, Any]:
    """{"progress", "metrics", "parameters", "usage"} from a trainer's /metrics page, in the status's field names."""
    progress: dict[str, Any] = {}
    usage: dict[str, int] = {}
    metrics: dict[str, float] = {}
    parameters: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "counter" and family.name[len(PREFIX):] in USAGE_COUNTERS:
            usage[USAGE_COUNTERS[family.name[len(PREFIX):]]] = int(sum(s.value for s in family.samples
                                                                       if s.name.endswith("_total")))
            continue
        if family.type != "gauge" or not family.name.startswith(PREFIX):
            continue
        name = family.name[len(PREFIX):]
        for sample in family.samples:
            value = sample.value
            if value != value:  # NaN: the trainer has not measured it yet
                continue
            if name == LABELLED_METRICS and METRIC_LABEL in sample.labels:
                metrics[metric_key(sample.labels[METRIC_LABEL])] = value
            elif name in PROGRESS_FIELDS:
                field = PROGRESS_FIELDS[name]
                value *= _SCALE.get(field, 1.0)
                progress[field] = max(0, int(value)) if field in _INTEGER_FIELDS else round(max(0.0, value), 2)
            elif name in PARAMETER_FIELDS:
                parameters[PARAMETER_FIELDS[name]] = int(value)
            elif name in METRIC_GAUGES:
                metrics[metric_key(name)] = value
    if "percent" in progress:
        progress["percent"] = min(100.0, progress["percent"])
    return {"progress": progress, "metrics": metrics,
            "parameters": parameters if len(parameters) == len(PARAMETER_FIELDS) else {}, "usage": usage}


# Pod IPs are reached directly, never through an HTTP(S)_PROXY from the operator's environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str, timeout: float) -> str:
    with _opener.open(url, timeout=timeout) as response:
        return response.read(1 << 20).decode("utf-8", "replace")


class Scraper:
    """Rate-limited reads of trainer metrics endpoints, one cached result per FineTuneJob."""

    def __init__(self, port: int, timeout: float, min_interval: float,
                 fetcher: Callable[[str, float], str] = fetch, clock: Callable[[], float] = time.monotonic):
        self.port, self.timeout, self.min_interval = port, timeout, min_interval
        self._fetch, self._clock = fetcher, clock
        self._last: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def read(self, key: str, pod_ip: str) -> dict[str, Any] | None:
        """The job's latest progress, read from its rank-0 pod at most ``min_interval`` ago; None if unreadable."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last and now - last[0] < self.min_interval:
                return last[1]
            # Claimed before the read, so concurrent reconciles of one job do not read the pod twice.
            self._last[key] = (now, last[1] if last else None)
        host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
        url = f"http://{host}:{self.port}/metrics"
        try:
            result = parse_trainer_metrics(self._fetch(url, self.timeout))
        except (OSError, ValueError) as error:
            log.debug("metrics of %s at %s not readable: %s", key, url, error)
            result = None
        with self._lock:
            self._last[key] = (now, result)
        return result

    def forget(self, key: str) -> None:
        """Drop a deleted job's cache entry."""
        with self._lock:
            self._last.pop(key, None)

