"""Prometheus metrics of one training run, served while it trains (DESIGN §4; names in docs/metrics.md).

Every series is named ``finetune_trainer_*`` and labelled ``finetunejob`` with the FineTuneJob's name (never
``job``: that is Prometheus' own target label); they live on the run's own ``CollectorRegistry`` (not the
process-global one), so two runs in one process, or tests, never collide. Names follow Prometheus practice: 0-1
ratios end in ``_ratio``, throughput is a pair of counters (``samples_total``, ``tokens_total``) a query takes the
``rate()`` of, peaks say so, and no ``*_created`` series is exported. Tokens are real tokens (the attention mask's
ones), never padding. MFU on GPUs is ``6 * parameters * tokens/s / peak FLOP/s`` over the logging window, the peak
taken from the device name (``FINETUNE_PEAK_FLOPS`` overrides it).
"""

from __future__ import annotations

import logging
import os
import socket

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server

# The *_created series of counters and histograms are gauges of Unix timestamps: no dashboard reads them, and the
# operator's status scraper would take them for training metrics.
disable_created_metrics()

LABEL = "finetunejob"
log = logging.getLogger("finetune_trainer")

PEAK_FLOPS_ENV = "FINETUNE_PEAK_FLOPS"
# Dense bf16/fp16 tensor-core peak per GPU (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_FLOPS = (
    ("H200", 989e12), ("H100", 989e12), ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("A6000", 155e12),
    ("V100", 125e12), ("T4", 65e12),
)


class Telemetry:
    """The run's gauges and counters, and the HTTP endpoint that serves them."""

    def __init__(self, job: str):
        self.job = job
        self.registry = CollectorRegistry()
        self._server = None
        self.url: str | None = None

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(f"finetune_trainer_{name}", doc, [LABEL, *labels], registry=self.registry)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(f"finetune_trainer_{name}", doc, [LABEL, *labels], registry=self.registry)

        self.step = gauge("step", "Optimizer steps taken.")
        self.total_steps = gauge("total_steps", "Optimizer steps the run will take.")
        self.epoch = gauge("epoch", "Current epoch (fractional).")
        self.train_loss = gauge("train_loss", "Mean training loss over the last logging window.")
        self.eval_loss = gauge("eval_loss", "Loss on the eval split at the last evaluation.")
        self.eval_metric = gauge("eval_metric", "Task metrics at the last evaluation.", "metric")
        self.learning_rate = gauge("learning_rate", "Current peak learning rate.")
        self.samples = counter("samples_total", "Training examples processed (all ranks).")
        self.tokens = counter("tokens_total", "Real (non-padding) training tokens processed (all ranks).")
        self.trainable_parameters = gauge("trainable_parameters", "Parameters that train.")
        self.total_parameters = gauge("total_parameters", "Parameters in the model.")
        self.progress_ratio = gauge("progress_ratio", "Share of optimizer steps done (0-1).")
        self.eta_seconds = gauge("eta_seconds", "Estimated seconds to the last step.")
        self.gpu_memory_peak_bytes = gauge("gpu_memory_peak_bytes", "Peak GPU memory allocated by this process.")
        self.mfu_ratio = gauge("mfu_ratio", "Model FLOP utilisation (0-1) on the GPU over the last logging window.")
        self.checkpoint_save_seconds = Histogram(
            "finetune_trainer_checkpoint_save_seconds", "Time to write one checkpoint.", [LABEL],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=self.registry)
        self.checkpoints = counter("checkpoints_total", "Checkpoints written.")
        self.download_bytes = counter("download_bytes_total", "Bytes downloaded from object storage (0 for what "
                                      "the cache held).", "source")

    def start(self, port: int, host: str = "0.0.0.0") -> str:
        """Serve /metrics on ``port`` (0, or a port already taken, picks a free one); returns the URL."""
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            if port == 0:
                raise
            log.warning("metrics port %d unavailable (%s); using a free port", port, exc)
            self._server, _ = start_http_server(0, addr=host, registry=self.registry)
        bound = self._server.server_port
        shown = "localhost" if host in ("0.0.0.0", "") else host
        self.url = f"http://{shown}:{bound}/metrics"
        log.info("metrics at %s (pod: %s:%d)", self.url, socket.gethostname(), bound)
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set(self, gauge: Gauge, value: float, **labels: str) -> None:
        gauge.labels(**{LABEL: self.job}, **labels).set(value)

    def add(self, counter: Counter, amount: float, **labels: str) -> None:
        counter.labels(**{LABEL: self.job}, **labels).inc(amount)

    def record_eval(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            if name == "eval_loss":
                self.set(self.eval_loss, value)
            self.set(self.eval_metric, value, metric=name)

    def record_checkpoint(self, seconds: float) -> None:
        self.checkpoint_save_seconds.labels(self.job).observe(seconds)
        self.add(self.checkpoints, 1)


def peak_flops(device_name: str) -> float | None:
    """Peak dense FLOP/s of one GPU, from ``FINETUNE_PEAK_FLOPS`` or the device-name table; None if unknown."""
    override = os.environ.get(PEAK_FLOPS_ENV)
    if override:
        return float(override)
    return next((flops for key, flops in PEAK_FLOPS if key in device_name), None)
