"""What a run says about itself while it trains, in one place: its steps, evaluations and checkpoints go to the
Prometheus gauges (telemetry.py), the summary (summary.Report), experiment tracking (tracking.py, rank 0), the
progress bar of `finetune run` and the log.

Throughput counts real tokens, never padding. Prometheus gets counters of samples and tokens, updated every step,
whose ``rate()`` is wall-clock throughput; the summary's samplesPerSecond/tokensPerSecond and the log are measured
over training steps only (evaluation and checkpoint time left out), the log's over the steps since its last line.

The console: a tqdm bar only when asked for (`finetune run`) and standard error is a terminal; anywhere else
(``kubectl logs``, CI, a file) a bar's carriage-return frames pile up into enormous lines, so the run prints one
plain line (step/total, epoch, loss, learning rate, samples/s, tokens/s, ETA) at its first step, then every
``FINETUNE_LOG_SECONDS`` seconds (default 10; 0: every step) and at its last step. The line follows time, not
``training.logEvery``: a step takes milliseconds on a tiny model and minutes on a big one, and a log reader wants
lines every few seconds either way, while logEvery stays the metrics' cadence (gauges, tracking).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import torch

from finetune_trainer.errors import ConfigError
from finetune_trainer.summary import Report
from finetune_trainer.telemetry import Telemetry, peak_flops
from finetune_trainer.tracking import Tracking

log = logging.getLogger("finetune_trainer")


# The libraries' own bars (tokenizing, loading and writing weights), which huggingface_hub (and transformers through
# it) and datasets read at import.
LIBRARY_BARS_ENV = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
LOG_SECONDS_ENV = "FINETUNE_LOG_SECONDS"  # seconds between plain progress lines (default 10; 0: every step)
DEFAULT_LOG_SECONDS = 10.0


@dataclass
class Window:
    """Sums over the steps since a report: the metrics' (every logEvery steps) or the log line's."""

    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    loss: float = 0.0
    steps: int = 0

    def rates(self) -> dict[str, float]:
        seconds = self.seconds or math.inf
        return {"loss": self.loss / max(1, self.steps), "samples_per_second": self.samples / seconds,
                "tokens_per_second": self.tokens / seconds}


class Throughput:
    """Samples, real tokens and seconds of training steps, over the run and over the current windows."""

    def __init__(self):
        self.samples = self.tokens = 0
        self.seconds = 0.0
        self.steps = 0
        self.lr = 0.0
        self._windows = {"metrics": Window(), "line": Window()}

    def add(self, samples: int, tokens: int, seconds: float, lr: float, loss: float) -> None:
        self.samples += samples
        self.tokens += tokens
        self.seconds += seconds
        self.steps += 1
        self.lr = lr
        for w in self._windows.values():
            w.samples += samples
            w.tokens += tokens
            w.seconds += seconds
            w.loss += loss
            w.steps += 1

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

    def flush(self, window: str = "metrics") -> dict[str, float]:
        """The window's mean loss and rates, and start it anew."""
        result = self._windows[window].rates()
        self._windows[window] = Window()
        return result


def quiet_library_bars() -> None:
    """Turn the libraries' progress bars off (before they are imported), unless the environment says otherwise."""
    for name in LIBRARY_BARS_ENV:
        os.environ.setdefault(name, "1")


def log_seconds() -> float:
    """``FINETUNE_LOG_SECONDS``, checked: a bad value is named rather than silently replaced."""
    raw = os.environ.get(LOG_SECONDS_ENV)
    if raw is None:
        return DEFAULT_LOG_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < math.inf:
        raise ConfigError(f"{LOG_SECONDS_ENV}={raw!r}: expected the seconds between progress lines, a number >= 0 "
                          "(0: a line every step)")
    return value


class Progress:
    """Reports each optimizer step; metrics every ``log_every`` steps and at the last one; a plain line every
    ``FINETUNE_LOG_SECONDS`` unless the bar shows."""

    def __init__(self, name: str, telemetry: Telemetry, report: Report, device: torch.device, world_size: int,
                 log_every: int, bar: bool, tracking: Tracking | None = None):
        self.name, self.telemetry, self.report, self.tracking = name, telemetry, report, tracking
        self.device, self.world_size, self.log_every = device, world_size, log_every
        self.meter = Throughput()
        self.total_steps = 0
        # Only a terminal redraws a bar in place; a pipe or a file would keep every frame.
        self._want_bar = bar and sys.stderr.isatty()
        self._bar = None
        self._counted = (0, 0)  # the meter's samples and tokens already added to the Prometheus counters
        self._line_every = log_seconds()
        self._last_line: float | None = None  # monotonic time of the last plain line; None: none yet

    def start(self, step: int, total_steps: int, trainable: int, total: int) -> None:
        """The run's size, once the model and data are known (``step`` > 0 when it resumed)."""
        t, self.total_steps = self.telemetry, total_steps
        self.report.trainable, self.report.total = trainable, total
        self.report.total_steps, self.report.step = total_steps, step
        t.set(t.trainable_parameters, trainable)
        t.set(t.total_parameters, total)
        t.set(t.total_steps, total_steps)
        if self.tracking is not None:
            self.tracking.start(step)

    def open_bar(self, step: int) -> None:
        """The progress bar of `finetune run` on a terminal, from ``step`` on."""
        if self._want_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_steps, initial=step, desc=self.name, unit="step", file=sys.stderr,
                             dynamic_ncols=True)

    def step(self, step: int, epoch: float, loss: float) -> None:
        t, meter = self.telemetry, self.meter
        self.report.step, self.report.epoch = step, epoch
        eta = meter.seconds_per_step * (self.total_steps - step)
        t.set(t.step, step)
        t.set(t.epoch, epoch)
        t.set(t.progress_ratio, step / self.total_steps)
        t.set(t.eta_seconds, eta)
        t.add(t.samples, meter.samples - self._counted[0])
        t.add(t.tokens, meter.tokens - self._counted[1])
        self._counted = (meter.samples, meter.tokens)
        self.report.samples, self.report.tokens = meter.samples, meter.tokens
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{meter.lr:.2e}", refresh=False)
        self._line(step, epoch, eta)
        if step % self.log_every and step != self.total_steps:
            return
        window = meter.flush()
        self.report.record_metrics({"train_loss": window["loss"], "samples_per_second": meter.samples_per_second,
                                    "tokens_per_second": meter.tokens_per_second})
        t.set(t.train_loss, window["loss"])
        t.set(t.learning_rate, meter.lr)
        if self.tracking is not None:
            self.tracking.log(step, {"train_loss": window["loss"], "learning_rate": meter.lr,
                                     "samples_per_second": window["samples_per_second"],
                                     "tokens_per_second": window["tokens_per_second"]})
        if self.device.type == "cuda":
            t.set(t.gpu_memory_peak_bytes, torch.cuda.max_memory_allocated(self.device))
            peak = peak_flops(torch.cuda.get_device_name(self.device))
            if peak:
                t.set(t.mfu_ratio, self._mfu(window["tokens_per_second"], peak))
                self.report.mfu = self._mfu(meter.tokens_per_second, peak)  # the run's average

    def _line(self, step: int, epoch: float, eta: float) -> None:
        """The plain progress line: this process's first step, then every ``FINETUNE_LOG_SECONDS``, the last."""
        now = time.monotonic()
        due = self._last_line is None or now - self._last_line >= self._line_every or step == self.total_steps
        if not due:
            return
        self._last_line = now
        window = self.meter.flush("line")
        (log.debug if self._bar is not None else log.info)(
            "step %d/%d epoch %.2f loss %.4f lr %.2e %.1f samples/s %.0f tokens/s ETA %s", step, self.total_steps,
            epoch, window["loss"], self.meter.lr, window["samples_per_second"], window["tokens_per_second"],
            timedelta(seconds=round(eta)))

    def _mfu(self, tokens_per_second: float, peak: float) -> float:
        return 6 * self.report.total * tokens_per_second / self.world_size / peak

    def evaluated(self, step: int, metrics: dict[str, float], seconds: float) -> None:
        self.report.record_metrics(metrics)
        self.telemetry.record_eval(metrics)
        if self.tracking is not None:
            self.tracking.log(step, metrics)
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        log.info("eval at step %d (epoch %.2f): %s (%.1fs)", step, self.report.epoch, shown, seconds)

    def checkpoint_saved(self, step: int, location: str | None, seconds: float) -> None:
        """``location``: where the checkpoint is, as the user names it (None on the ranks that did not commit it)."""
        if location is not None:
            self.report.checkpoint = {"location": location, "step": step}
            log.info("checkpoint step %d saved to %s (%.1fs)", step, location, seconds)
        self.telemetry.record_checkpoint(seconds)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
