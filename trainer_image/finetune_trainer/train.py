"""The training recipe, top to bottom.

``run(config)`` → ``Recipe.setup`` (pre-flight: data and columns, model, layer selection, strategy; then placement,
batches, optimizer, resume from the newest complete checkpoint) → ``Recipe.train`` (epochs of length-grouped
batches; gradient accumulation, clipping, learning-rate schedule; evaluation, early stopping, checkpoints; a
NaN/inf guard; SIGTERM/SIGINT stop at the next step boundary with a checkpoint) → ``Recipe.save_model`` → summary.

``run`` writes the summary (``summary.py``) whatever happens, then re-raises a ``TrainerError`` on failure so
``python -m finetune_trainer`` can exit with its code.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from finetune_trainer import batching, checkpoints, data, models, optim, runtime, summary
from finetune_trainer.config import TrainerConfig
from finetune_trainer.errors import (ConfigError, Interrupted, NonFiniteLoss, OutOfMemory, StorageError,
                                     TrainerError)
from finetune_trainer.layers import resolve_layout
from finetune_trainer.strategies import build_strategy
from finetune_trainer.tasks.base import get_task
from finetune_trainer.telemetry import Telemetry, peak_flops

log = logging.getLogger("finetune_trainer")


def run(config: TrainerConfig, *, progress_bar: bool = False) -> dict:
    """Train (resuming from ``<output>/checkpoints`` when a complete checkpoint is there); return the summary.

    The summary also goes to ``<output>/summary.json`` and the termination log. On failure the summary says why
    and the ``TrainerError`` is raised after it is written."""
    output = models.local_path(config.output.location)
    report = summary.Report(output_location=config.output.location)
    telemetry = Telemetry(config.name)
    stop = StopSignal()
    rt: runtime.Runtime | None = None
    error: TrainerError | None = None
    try:
        rt = runtime.setup(config.training)
        if rt.is_main:
            report.metrics_url = telemetry.start(config.metrics_port)
        else:
            log.setLevel(logging.WARNING)  # one rank's log lines are enough
        stop.install()
        recipe = Recipe(config, output, rt, telemetry, report, stop, progress_bar)
        recipe.setup()
        recipe.train()
        recipe.save_model()
    except TrainerError as exc:
        error = exc
    except torch.cuda.OutOfMemoryError as exc:
        error = OutOfMemory(
            f"out of GPU memory ({str(exc).splitlines()[0]}); lower training.batchSize (raise "
            "training.gradientAccumulation to keep the effective batch), set training.gradientCheckpointing, or "
            "train fewer parameters (strategy partial or lora)", field="training.batchSize")
    except OSError as exc:
        error = StorageError(f"I/O error: {exc}", field="output.location")
    except Exception as exc:  # a bug or an unforeseen library failure: report it, do not retry it
        log.exception("training failed")
        error = TrainerError(f"{type(exc).__name__}: {exc}")
    finally:
        stop.uninstall()
        telemetry.stop()
        result = report.as_dict(error)
        if rt is None or rt.is_main:
            summary.write(result, output)
        if rt is not None:
            rt.close()
    if error is not None:
        log.error("%s: %s", error.reason, error)
        raise error
    return result


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint, so a restart continues from exactly here."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch: int = 0  # next micro-batch of this epoch
    stage_epoch: int = 0  # staged unfreezing applied up to this epoch
    best_metric: float | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    last_eval_step: int = -1
    last_save_step: int = -1


class Recipe:
    def __init__(self, config: TrainerConfig, output: Path, rt: runtime.Runtime, telemetry: Telemetry,
                 report: summary.Report, stop: StopSignal, progress_bar: bool):
        self.config = config
        self.training = config.training
        self.output = output
        self.rt = rt
        self.telemetry = telemetry
        self.report = report
        self.stop = stop
        self.progress_bar = progress_bar
        self.state = TrainState()

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, training = self.config, self.training
        _seed_everything(training.seed)

        # Pre-flight: everything that can be wrong with the spec fails here, before the first step.
        self.task = get_task(cfg.task)
        self.task.configure(training)
        self.tokenizer = models.load_tokenizer(cfg.model)
        raw = data.load_raw(cfg.dataset, training.seed)
        self.data = self.task.prepare(raw, self.tokenizer, cfg.dataset)
        # Real tokens per example, for tokens/s without padding (packed rows carry no attention mask) and
        # without a device sync per micro-batch.
        self.train_lengths = list(self.data.train["length"])
        model = models.load_model(cfg.model, self.task.auto_model, self.data.model_kwargs, self.tokenizer,
                                  dropout=training.dropout)
        self.layout = resolve_layout(model)
        self.strategy = build_strategy(model, self.layout, cfg.strategy)
        self.model = self.strategy.model.to(self.rt.device)
        if training.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        self.batches = batching.LengthGroupedBatches(
            self.data.train["length"], training.batch_size, training.seed, group_by_length=training.group_by_length,
            rank=self.rt.rank, world_size=self.rt.world_size)
        self.steps_per_epoch = math.ceil(len(self.batches) / training.gradient_accumulation)
        self.total_steps = math.ceil(training.epochs * self.steps_per_epoch)
        if training.max_steps is not None:
            self.total_steps = min(self.total_steps, training.max_steps)
        self.warmup_steps = optim.warmup_steps(self.total_steps, training.warmup_ratio)

        resumed = checkpoints.latest(self.output)
        if resumed is not None:
            self._restore_weights(resumed)
        self.wrapped = self._wrap()
        self.optimizer = optim.build_optimizer(
            optim.parameter_groups(self.model, self.layout, training), training, self.rt.device)
        self.scaler = self.rt.grad_scaler()
        if resumed is not None:
            runtime.load_optimizer_state(self.wrapped, self.optimizer, resumed.optimizer_state(self.rt.device))
            resumed.restore_rng(self.rt.rank)
            self.report.checkpoint = {"location": self._user_location(resumed.path), "step": resumed.step}
            log.info("resumed from %s: step %d/%d, epoch %d, batch %d", resumed.path, self.state.step,
                     self.total_steps, self.state.epoch, self.state.batch)

        manifest = self.strategy.manifest()
        self.report.trainable, self.report.total = manifest["trainableParameters"], manifest["totalParameters"]
        self.report.total_steps, self.report.step = self.total_steps, self.state.step
        self.telemetry.set(self.telemetry.trainable_parameters, manifest["trainableParameters"])
        self.telemetry.set(self.telemetry.total_parameters, manifest["totalParameters"])
        self.telemetry.set(self.telemetry.total_steps, self.total_steps)
        log.info("%s on %s: %s, %d of %d parameters train (blocks: %s; full %s, LoRA %s); %d steps, %d examples, "
                 "%s on %s x%d, %d CPU threads", cfg.strategy.type, self.layout.stacks[0].block_class,
                 cfg.task, manifest["trainableParameters"], manifest["totalParameters"], manifest["blocks"],
                 manifest["fullBlocks"], manifest["adaptedBlocks"], self.total_steps, len(self.data.train),
                 self.rt.precision, self.rt.device, self.rt.world_size, self.rt.threads)
        log.info("trainable: %s", self.strategy.describe_trainable())

    def _restore_weights(self, ckpt: checkpoints.Checkpoint) -> None:
        """Put the checkpoint's trained weights into the freshly built model and take over its position."""
        self.state = TrainState(**ckpt.state["train"])
        self.strategy.apply_stage(self.state.stage_epoch)
        saved, now = set(ckpt.manifest["trainable"]), set(self.strategy.trainable_names())
        if saved != now:
            raise ConfigError(
                f"output.location {self.config.output.location} holds checkpoints of a different strategy or model "
                f"({len(saved)} trainable tensors there, {len(now)} now); use a new output.location or delete "
                f"{checkpoints.directory(self.output)}", field="output.location")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in ckpt.weights().items():
                params[name].copy_(tensor)
        self.report.record_metrics(ckpt.state.get("metrics", {}))

    def _wrap(self) -> torch.nn.Module:
        fsdp = runtime.wants_fsdp(self.model, self.rt)
        if fsdp and self.strategy.uses_adapters and (
                not self.strategy.adapter_is_complete or self.config.output.merge_adapter or self.strategy.stages):
            raise ConfigError(
                "this model needs FSDP (sharded across GPUs), where adapters cannot be merged or staged: use "
                "strategy.type lora (without embeddings, output.mergeAdapter or unfreeze) or partial",
                field="strategy.type")
        blocks = {type(b.module) for b in self.layout.blocks}
        return runtime.wrap(self.model, self.rt, blocks, fsdp)

    # ---------------------------------------------------------------- train
    def train(self) -> None:
        training, state = self.training, self.state
        bar = self._progress_bar()
        meter = Throughput()
        while state.step < self.total_steps and not state.stopped_early:
            if self.strategy.apply_stage(state.epoch):
                self._grow_optimizer()
            state.stage_epoch = state.epoch
            epoch_batches = self.batches.epoch(state.epoch)
            pending = epoch_batches[state.batch:]
            stream = iter(batching.loader(self.data.train, pending, self._collate, **self._loader_options()))
            self._train_mode()
            for start in range(0, len(pending), training.gradient_accumulation):
                window = pending[start:start + training.gradient_accumulation]
                loss = self._step(stream, window, meter)
                state.step += 1
                state.batch += len(window)
                self._record_step(loss, state.epoch + state.batch / len(epoch_batches), meter, bar)
                epoch_done = state.batch == len(epoch_batches)
                if epoch_done:
                    state.epoch, state.batch = state.epoch + 1, 0
                if self.rt.any_rank(self.stop.requested):
                    self.save_checkpoint()
                    raise Interrupted(f"stopped by signal at step {state.step}; checkpoint saved, the next attempt "
                                      "resumes from it")
                if (training.eval_every and state.step % training.eval_every == 0) or (
                        epoch_done and not training.eval_every):
                    state.stopped_early = self.evaluate()
                if (training.save_every and state.step % training.save_every == 0) or epoch_done:
                    self.save_checkpoint()
                if state.step >= self.total_steps or state.stopped_early:
                    break
        if bar is not None:
            bar.close()
        if state.last_eval_step != state.step:
            self.evaluate()
        if state.last_save_step != state.step:
            self.save_checkpoint()

    def _step(self, stream, window: list[list[int]], meter: Throughput) -> float:
        """One optimizer step over the micro-batches of ``window``; returns the mean loss."""
        started = time.perf_counter()
        factor = optim.lr_factor(self.state.step, self.total_steps, self.warmup_steps, self.training.schedule)
        lr = optim.set_learning_rate(self.optimizer, factor)
        loss_sum = torch.zeros((), device=self.rt.device)
        samples = tokens = 0
        for i, indices in enumerate(window):
            batch = {k: v.to(self.rt.device, non_blocking=True) for k, v in next(stream).items()}
            with runtime.no_sync(self.wrapped, skip=i < len(window) - 1), self.rt.autocast():
                loss = self.wrapped(**batch).loss
            scaled = loss / len(window)
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach()
            samples += len(indices)
            tokens += sum(self.train_lengths[j] for j in indices)
        mean_loss = float(loss_sum) / len(window)
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(
                f"the training loss became {mean_loss} at step {self.state.step + 1}; lower "
                "training.learningRate, keep training.maxGradNorm set, or use training.precision fp32",
                field="training.learningRate")
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.training.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           self.training.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        meter.add(samples * self.rt.world_size, tokens * self.rt.world_size, time.perf_counter() - started, lr,
                  mean_loss)
        return mean_loss

    def _record_step(self, loss: float, epoch: float, meter: Throughput, bar) -> None:
        t, state = self.telemetry, self.state
        self.report.step, self.report.epoch = state.step, epoch
        t.set(t.step, state.step)
        t.set(t.epoch, epoch)
        t.set(t.progress_percent, 100.0 * state.step / self.total_steps)
        t.set(t.eta_seconds, meter.seconds_per_step * (self.total_steps - state.step))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{meter.lr:.2e}", refresh=False)
        if state.step % self.training.log_every and state.step != self.total_steps:
            return
        window = meter.flush()
        self.report.record_metrics({"train_loss": window["loss"], "samples_per_second": meter.samples_per_second,
                                    "tokens_per_second": meter.tokens_per_second})
        t.set(t.train_loss, window["loss"])
        t.set(t.learning_rate, meter.lr)
        t.set(t.samples_per_second, window["samples_per_second"])
        t.set(t.tokens_per_second, window["tokens_per_second"])
        if self.rt.device.type == "cuda":
            t.set(t.gpu_memory_bytes, torch.cuda.max_memory_allocated(self.rt.device))
            peak = peak_flops(torch.cuda.get_device_name(self.rt.device))
            if peak:
                flops = 6 * self.report.total * window["tokens_per_second"] / self.rt.world_size
                t.set(t.mfu, flops / peak)
        (log.debug if bar is not None else log.info)(
            "step %d/%d epoch %.2f loss %.4f lr %.2e %.1f samples/s %.0f tokens/s", state.step, self.total_steps,
            epoch, window["loss"], meter.lr, window["samples_per_second"], window["tokens_per_second"])

    def _grow_optimizer(self) -> None:
        """Staged unfreezing added parameters: a new optimizer that keeps the old parameters' state, and a new
        DDP wrapper that knows the new parameters."""
        groups = optim.parameter_groups(self.model, self.layout, self.training)
        self.optimizer = optim.rebuild_optimizer(self.optimizer, groups, self.training, self.rt.device)
        if isinstance(self.wrapped, torch.nn.parallel.DistributedDataParallel):
            self.wrapped = self._wrap()
        log.info("epoch %d: blocks %s now train fully (%d trainable parameters)", self.state.epoch,
                 self.strategy.full_blocks, sum(p.numel() for p in self.model.parameters() if p.requires_grad))

    def _train_mode(self) -> None:
        self.wrapped.train()
        for module in self.strategy.frozen_prefix():
            module.eval()

    def _collate(self, rows: list[dict]) -> dict:
        return self.task.collate(self.tokenizer, rows)

    def _loader_options(self) -> dict:
        # Workers prefetch while the GPU computes; on CPUs they would compete with the compute threads.
        on_gpu = self.rt.device.type == "cuda"
        return {"workers": 2 if on_gpu else 0, "pin_memory": on_gpu}

    # ---------------------------------------------------------------- evaluate
    def evaluate(self) -> bool:
        """Run the eval split; returns True when early stopping says to stop."""
        state = self.state
        state.last_eval_step = state.step
        if self.data.eval is None:
            return False
        started = time.perf_counter()
        with self.rt.autocast():
            metrics = self.task.evaluate(self.wrapped, self.data, self.tokenizer, self.training.batch_size,
                                         self.rt.device)
        runtime.reshard(self.wrapped)
        self._train_mode()
        self.report.record_metrics(metrics)
        self.telemetry.record_eval(metrics)
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        log.info("eval at step %d (epoch %.2f): %s (%.1fs)", state.step, self.report.epoch, shown,
                 time.perf_counter() - started)
        return self._early_stopping(metrics)

    def _early_stopping(self, metrics: dict[str, float]) -> bool:
        rule, state = self.training.early_stopping, self.state
        if rule is None:
            return False
        if rule.metric not in metrics:
            raise ConfigError(f"training.earlyStopping.metric {rule.metric!r} is not reported by {self.config.task}; "
                              f"it reports {sorted(metrics)}", field="training.earlyStopping.metric")
        value = metrics[rule.metric]
        lower_is_better = "loss" in rule.metric or "perplexity" in rule.metric
        gain = (state.best_metric - value if lower_is_better else value - state.best_metric) \
            if state.best_metric is not None else math.inf
        if gain > rule.min_delta:
            state.best_metric, state.evals_without_improvement = value, 0
            return False
        state.evals_without_improvement += 1
        if state.evals_without_improvement >= rule.patience:
            log.info("early stopping at step %d: %s has not improved on %.4f for %d evaluations", state.step,
                     rule.metric, state.best_metric, rule.patience)
            return True
        return False

    # ---------------------------------------------------------------- save
    def save_checkpoint(self) -> None:
        """Write a complete checkpoint of the current step atomically (all ranks take part)."""
        started = time.perf_counter()
        state, rt = self.state, self.rt
        state.last_save_step = state.step
        staging = checkpoints.directory(self.output) / f".tmp-step-{state.step}"
        if rt.is_main:
            checkpoints.staging_dir(self.output, state.step)
        rt.barrier()
        checkpoints.save_rng(staging, rt.rank)
        optimizer_state = runtime.optimizer_state(self.wrapped, self.optimizer)
        weights = runtime.trainable_weights(self.model)
        if rt.is_main:
            trainer_state = {"train": asdict(state), "totalSteps": self.total_steps,
                             "schedule": {"kind": str(self.training.schedule), "warmupSteps": self.warmup_steps},
                             "metrics": dict(self.report.metrics)}
            checkpoints.save_main(staging, weights, optimizer_state, trainer_state, self.strategy.manifest(),
                                  self.config.wire())
        rt.barrier()
        if rt.is_main:
            final = checkpoints.commit(self.output, staging, state.step, self.config.output.keep_checkpoints)
            self.report.checkpoint = {"location": self._user_location(final), "step": state.step}
            log.info("checkpoint step %d saved to %s (%.1fs)", state.step, final, time.perf_counter() - started)
        rt.barrier()
        self.telemetry.record_checkpoint(time.perf_counter() - started)

    def save_model(self) -> None:
        """The final model in ``<output>/model``: the fine-tuned model, or the LoRA adapter (plus the merged model
        under ``merged/`` with output.mergeAdapter). When base weights trained in place (hybrid, or lora with
        embeddings) the adapter alone is incomplete, so the model is saved merged."""
        target = self.output / "model"
        staging = self.output / ".tmp-model"
        # Under FSDP the weights are gathered first (every rank takes part); otherwise the modules hold them.
        state_dict = runtime.full_state_dict(self.model) if runtime.is_fsdp(self.model) else None
        if self.rt.is_main:
            if staging.exists():
                shutil.rmtree(staging)
            model = self.strategy.model
            if self.strategy.uses_adapters and self.strategy.adapter_is_complete:
                model.save_pretrained(staging, state_dict=state_dict)
                if self.config.output.merge_adapter:
                    model.merge_and_unload().save_pretrained(staging / "merged")
                    self.tokenizer.save_pretrained(staging / "merged")
            else:
                if self.strategy.uses_adapters:
                    model = model.merge_and_unload()
                # Packed training runs without the KV cache; the saved model should generate with it.
                if getattr(model.config, "use_cache", None) is False:
                    model.config.use_cache = True
                model.save_pretrained(staging, state_dict=state_dict)
            self.tokenizer.save_pretrained(staging)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            self.report.model_location = self._user_location(target)
            log.info("model saved to %s", target)
        self.rt.barrier()

    def _user_location(self, path: Path) -> str:
        """``path`` as the user named the output: under pvc://claim/... when that is what they wrote."""
        location = self.config.output.location
        relative = path.relative_to(self.output).as_posix()
        return f"{location.rstrip('/')}/{relative}" if location.startswith("pvc://") else str(path)

    def _progress_bar(self):
        if not (self.progress_bar and self.rt.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.state.step, desc=self.config.name, unit="step",
                    file=sys.stderr, dynamic_ncols=True)


class Throughput:
    """Samples, real tokens and seconds of training steps (eval and checkpoint time excluded)."""

    def __init__(self):
        self.samples = self.tokens = 0
        self.seconds = 0.0
        self.steps = 0
        self.lr = 0.0
        self._window = {"samples": 0, "tokens": 0, "seconds": 0.0, "loss": 0.0, "steps": 0}

    def add(self, samples: int, tokens: int, seconds: float, lr: float, loss: float) -> None:
        self.samples += samples
        self.tokens += tokens
        self.seconds += seconds
        self.steps += 1
        self.lr = lr
        w = self._window
        w["samples"] += samples
        w["tokens"] += tokens
        w["seconds"] += seconds
        w["loss"] += loss
        w["steps"] += 1

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

    def flush(self) -> dict[str, float]:
        """The logging window's means and rates, and start a new window."""
        w = self._window
        seconds = w["seconds"] or math.inf
        result = {"loss": w["loss"] / max(1, w["steps"]), "samples_per_second": w["samples"] / seconds,
                  "tokens_per_second": w["tokens"] / seconds}
        self._window = {"samples": 0, "tokens": 0, "seconds": 0.0, "loss": 0.0, "steps": 0}
        return result


class StopSignal:
    """SIGTERM/SIGINT set a flag the loop checks at each step boundary (it then saves and exits retryably);
    a second signal stops at once, without a checkpoint."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, _frame) -> None:
        if self.requested:
            raise Interrupted(f"{signal.Signals(signum).name} again: stopped without saving a checkpoint")
        self.requested = True
        log.warning("%s received: saving a checkpoint at the end of this step", signal.Signals(signum).name)


def _seed_everything(seed: int) -> None:
    """Python, NumPy and torch (all devices) generators: new heads initialise and dropout starts identically."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
