"""The training recipe, top to bottom.

``run(config)`` → ``Recipe.setup`` (pre-flight: data and columns, model, layer selection, strategy; then placement,
batches, optimizer, resume from the newest complete checkpoint) → ``Recipe.train`` (epochs of length-grouped
batches; gradient accumulation, clipping, learning-rate schedule; evaluation, early stopping, checkpoints; a
NaN/inf guard; SIGTERM/SIGINT stop at the next step boundary with a checkpoint) → ``Recipe.final_model`` (the
last or the best checkpoint's weights, spec.evaluation) → ``Recipe.evaluate_final`` → ``Recipe.save_model`` (the
model and its export record) → ``gates.enforce`` → ``Recipe.push`` (``output.push``) → summary. Anything that
publishes the model goes after ``gates.enforce``: a model that misses a gate is saved for inspection and published
nowhere. An attempt that finds this config's export record skips straight to the gates and the push, so a failed
push is retried without training.

The recipe only sequences; each step's details live in the module that owns them: tasks/ (data to features,
evaluation), strategies.py (what trains), optim.py (optimizer, schedule, the gradient step), runtime.py (device,
distribution, precision), checkpoints.py (atomic saves across ranks), mirror.py and cache.py (an ``s3://`` output
committed in its bucket, ``s3://`` sources downloaded once), stopping.py (signals, early stopping),
progress.py (gauges, summary, progress bar, log), export.py (the final model), push.py (the registry artifact),
locations.py (paths both ways).

``run`` writes the summary (``summary.py``) whatever happens, then re-raises a ``TrainerError`` on failure so
``python -m finetune_trainer`` can exit with its code.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from finetune_trainer import (batching, cache, checkpoints, cpu_dropout, data, export, gates, locations, lora_fused,
                              mirror, models, optim, push, quantization, runtime, summary)
from finetune_trainer.config import TrainerConfig
from finetune_trainer.errors import (ConfigError, DataError, Interrupted, ModelLoadError, NonFiniteLoss, OutOfMemory,
                                     StorageError, TrainerError)
from finetune_trainer.layers import resolve_layout
from finetune_trainer.objectstore import Store, is_s3, store_for
from finetune_trainer.progress import Progress, Throughput
from finetune_trainer.stopping import StopSignal, early_stop
from finetune_trainer.strategies import build_strategy, leave_adapter_casts_to_autocast
from finetune_trainer.tasks.base import get_task
from finetune_trainer.telemetry import Telemetry
from finetune_trainer.tracking import Tracking

log = logging.getLogger("finetune_trainer")


def run(config: TrainerConfig, *, progress_bar: bool = False) -> dict:
    """Train (resuming from ``<output>/checkpoints`` when a complete checkpoint is there); return the summary.

    The summary also goes to ``<output>/summary.json`` and the termination log. On failure the summary says why
    and the ``TrainerError`` is raised after it is written."""
    output = locations.local_path(config.output.location)
    report = summary.Report(output_location=config.output.location)
    telemetry = Telemetry(config.name)
    stop = StopSignal()
    rt: runtime.Runtime | None = None
    tracking: Tracking | None = None
    error: TrainerError | None = None
    store: Store | None = None
    try:
        store = store_for(config)
        rt = runtime.setup(config.training)
        if rt.is_main:
            report.metrics_url = telemetry.start(config.metrics_port)
        else:
            log.setLevel(logging.WARNING)  # one rank's log lines are enough
        stop.install()
        tracking = Tracking(config, output, main=rt.is_main)
        recipe = Recipe(config, output, rt, telemetry, report, stop, progress_bar, store, tracking)
        if not recipe.reuse_export():  # an earlier attempt exported this config's model: only the push is left
            recipe.setup()
            recipe.train()
            recipe.final_model()
            recipe.evaluate_final()
            recipe.save_model()
        if report.evaluation is not None:  # this attempt's verdict, or the one kept in the export record
            gates.enforce(report.evaluation)
        recipe.push()
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
        if tracking is not None:
            report.tracking = tracking.finish(summary.outcome(error), report.model_location)
        result = report.as_dict(error)
        if rt is None or rt.is_main:
            summary.write(result, output)
            mirror.upload_records(store, config.output.location, output, error)
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
    best_model_metric: float | None = None  # evaluation.finalModel best: the best evaluation.metric so far
    best_model_step: int = -1  # and the step of its checkpoint


class Recipe:
    """One run: ``setup`` (pre-flight, then resume), ``train`` (the loop), ``save_model``; see the module docstring."""

    def __init__(self, config: TrainerConfig, output: Path, rt: runtime.Runtime, telemetry: Telemetry,
                 report: summary.Report, stop: StopSignal, progress_bar: bool, store: Store | None = None,
                 tracking: Tracking | None = None):
        self.config = config
        self.store = store  # the S3 client when a location is s3://
        self.telemetry = telemetry
        self.training = config.training
        self.output = output
        self.rt = rt
        self.report = report
        self.stop = stop
        self.progress = Progress(config.name, telemetry, report, rt.device, rt.world_size, config.training.log_every,
                                 bar=progress_bar and rt.is_main, tracking=tracking)
        self.state = TrainState()
        self.exported: export.Exported | None = None  # rank 0's export record, once the model is exported

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, training = self.config, self.training
        _seed_everything(training.seed)

        # Pre-flight: everything that can be wrong with the spec fails here, before the first step.
        quantization.preflight(cfg, self.rt.device)
        if cfg.output.push and self.rt.is_main:
            push.preflight(cfg.output.push)
        if is_s3(cfg.output.location):  # the bucket's newest complete checkpoint, one copy per machine
            if self.rt.local_rank == 0:
                before = self.store.downloaded
                mirror.restore(self.store, cfg.output.location, self.output)
                self._downloaded("checkpoint", before)
            self.rt.barrier()
        self.task = get_task(cfg.task)
        self.task.configure(training)
        model_spec = self._fetched(cfg.model, "model.source", ModelLoadError)
        self.tokenizer = models.load_tokenizer(model_spec)
        raw = data.load_raw(self._fetched(cfg.dataset, "dataset.source", DataError), training.seed)
        self.data = self.task.prepare(raw, self.tokenizer, cfg.dataset)
        gates.check_metric_names(cfg.evaluation, self.task.higher_is_better, cfg.task)
        self.test_data = gates.prepare_split(cfg, self.task, self.tokenizer, raw)
        self.keeps_best = gates.keeps_best(cfg.evaluation)
        # Real tokens per example, for tokens/s without padding (packed rows carry no attention mask) and
        # without a device sync per micro-batch.
        self.train_lengths = list(self.data.train["length"])
        model = quantization.prepare(models.load_model(
            model_spec, self.task.auto_model, self.data.model_kwargs, self.tokenizer, dropout=training.dropout,
            **quantization.load_kwargs(cfg.strategy, self.rt.device)))
        self.layout = resolve_layout(model)
        self.strategy = build_strategy(model, self.layout, cfg.strategy)
        self.model = self.strategy.model.to(self.rt.device)
        # On CPU, torch's dropout masks and peft's LoRA bookkeeping cost as much as the matmuls (measured there).
        if self.rt.device.type == "cpu":
            cpu_dropout.install(self.model)
            lora_fused.fuse(self.model)
        if self.strategy.uses_adapters and self.rt.precision != "fp32":
            leave_adapter_casts_to_autocast(self.model)
        if training.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        self.batches = batching.LengthGroupedBatches(
            self.train_lengths, training.batch_size, training.seed, group_by_length=training.group_by_length,
            rank=self.rt.rank, world_size=self.rt.world_size, budget=self.task.budget)
        self.total_steps = optim.total_steps(self.batches.count, training)
        self.warmup_steps = optim.warmup_steps(self.total_steps, training.warmup_ratio)

        resumed = checkpoints.latest(self.output)
        if resumed is not None:  # take over its position and trained weights; optimizer and RNG follow below
            self.state = TrainState(**resumed.state["train"])
            self.strategy.apply_stage(self.state.stage_epoch)
            resumed.restore_weights(self.model, self.strategy.trainable_names(), cfg.output.location)
            self.report.record_metrics(resumed.state.get("metrics", {}))
        self.wrapped = self._wrap()
        self.optimizer = optim.build_optimizer(optim.parameter_groups(self.model, self.layout, training), training)
        self.scaler = self.rt.grad_scaler()
        if resumed is not None:
            resumed.restore_optimizer(self.model, self.optimizer, self.rt.device)
            resumed.restore_rng(self.rt.rank)
            self.report.checkpoint = {"location": locations.user_location(resumed.path, cfg.output.location),
                                      "step": resumed.step}
            log.info("resumed from %s: step %d/%d, epoch %d, batch %d", resumed.path, self.state.step,
                     self.total_steps, self.state.epoch, self.state.batch)

        trains = self.strategy.trainable_set()
        self.progress.start(self.state.step, self.total_steps, trains["trainableParameters"], trains["totalParameters"])
        log.info("%s, %s; %d steps, %d examples, %s on %s x%d, %d CPU threads", cfg.task, self.strategy.describe(),
                 self.total_steps, len(self.data.train), self.rt.precision, self.rt.device, self.rt.world_size,
                 self.rt.threads)
        log.info("trainable: %s", self.strategy.describe_trainable())

    def _wrap(self) -> torch.nn.Module:
        fsdp = runtime.wants_fsdp(self.model, self.rt)
        if fsdp and self.keeps_best:
            raise ConfigError("evaluation.finalModel best is not supported when the model is sharded (FSDP); use "
                              "last, or more GPUs per node so the model fits without sharding",
                              field="evaluation.finalModel")
        if fsdp:
            self.strategy.check_shardable(self.config.output.merge_adapter)
        return runtime.wrap(self.model, self.rt, {type(b.module) for b in self.layout.blocks}, fsdp)

    # ---------------------------------------------------------------- train
    def train(self) -> None:
        training, state = self.training, self.state
        self.progress.open_bar(state.step)
        while state.step < self.total_steps and not state.stopped_early:
            if self.strategy.apply_stage(state.epoch):
                self._grow_optimizer()
            state.stage_epoch = state.epoch
            epoch_batches = self.batches.epoch(state.epoch)
            pending = epoch_batches[state.batch:]
            stream = self._batches(pending)
            self._train_mode()
            for start in range(0, len(pending), training.gradient_accumulation):
                window = pending[start:start + training.gradient_accumulation]
                loss = self._step(stream, window, self.progress.meter)
                state.step += 1
                state.batch += len(window)
                self.progress.step(state.step, state.epoch + state.batch / len(epoch_batches), loss)
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
                best_unsaved = state.best_model_step == state.step  # its weights must be on disk to come back
                if (training.save_every and state.step % training.save_every == 0) or epoch_done or best_unsaved:
                    self.save_checkpoint()
                if state.step >= self.total_steps or state.stopped_early:
                    break
        self.progress.close()
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
        micro_batches = [next(stream) for _ in window]
        # Micro-batches weigh by their loss units (a causal LM's labelled tokens) across the step and the ranks;
        # the logged loss is this rank's mean over its own units.
        units = [self.task.loss_units(batch) for batch in micro_batches]
        weights = batching.loss_weights(units, self.rt.sum_over_ranks, self.rt.world_size)
        shown = batching.loss_weights(units, float, 1)
        for i, (indices, batch) in enumerate(zip(window, micro_batches)):
            batch = {k: v.to(self.rt.device, non_blocking=True) for k, v in batch.items()}
            with runtime.no_sync(self.wrapped, skip=i < len(window) - 1), self.rt.autocast():
                loss = self.wrapped(**batch).loss
            scaled = loss * weights[i]
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach() * shown[i]
            samples += len(indices)
            tokens += sum(self.train_lengths[j] for j in indices)
        mean_loss = float(loss_sum)
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(
                f"the training loss became {mean_loss} at step {self.state.step + 1}; lower "
                "training.learningRate, keep training.maxGradNorm set, or use training.precision fp32",
                field="training.learningRate")
        optim.apply_gradients(self.optimizer, self.scaler, self.model, self.training.max_grad_norm)
        meter.add(samples * self.rt.world_size, tokens * self.rt.world_size, time.perf_counter() - started, lr,
                  mean_loss)
        return mean_loss

    def _grow_optimizer(self) -> None:
        """Staged unfreezing added parameters: a new optimizer that keeps the old parameters' state, and a new
        DDP wrapper that knows the new parameters."""
        groups = optim.parameter_groups(self.model, self.layout, self.training)
        self.optimizer = optim.rebuild_optimizer(self.optimizer, groups, self.training)
        if isinstance(self.wrapped, torch.nn.parallel.DistributedDataParallel):
            self.wrapped = self._wrap()
        log.info("epoch %d: blocks %s now train fully (%d trainable parameters)", self.state.epoch,
                 self.strategy.full_blocks, sum(p.numel() for p in self.model.parameters() if p.requires_grad))

    def _train_mode(self) -> None:
        self.wrapped.train()
        for module in self.strategy.frozen_prefix():
            module.eval()

    def _batches(self, batches: list[list[int]]):
        # Workers prefetch while the GPU computes; on CPUs they would compete with the compute threads.
        on_gpu = self.rt.device.type == "cuda"
        return iter(batching.loader(self.data.train, batches, partial(self.task.collate, self.tokenizer),
                                    workers=2 if on_gpu else 0, pin_memory=on_gpu))

    # ---------------------------------------------------------------- evaluate
    def evaluate(self) -> bool:
        """Run the eval split; returns True when early stopping says to stop."""
        state = self.state
        state.last_eval_step = state.step
        if self.data.eval is None:
            return False
        started = time.perf_counter()
        metrics = self._measure(self.data)
        self._train_mode()
        self.progress.evaluated(state.step, metrics, time.perf_counter() - started)
        if self.keeps_best:
            metric = self.config.evaluation.metric
            if gates.improves(metrics[metric], state.best_model_metric, self.task.higher_is_better[metric]):
                state.best_model_metric, state.best_model_step = metrics[metric], state.step
        return early_stop(self.training.early_stopping, metrics, self.task.higher_is_better, state,
                          self.config.task)

    def _measure(self, data) -> dict[str, float]:
        with self.rt.autocast():
            metrics = self.task.evaluate(self.wrapped, data, self.tokenizer, self.training.batch_size, self.rt.device)
        runtime.reshard(self.wrapped)
        return metrics

    # ---------------------------------------------------------------- save
    def save_checkpoint(self) -> None:
        """Write a complete checkpoint of the current step atomically (all ranks take part)."""
        started = time.perf_counter()
        state = self.state
        state.last_save_step = state.step
        trainer_state = {"train": asdict(state), "totalSteps": self.total_steps,
                         "schedule": {"kind": str(self.training.schedule), "warmupSteps": self.warmup_steps},
                         "metrics": dict(self.report.metrics)}
        final = checkpoints.save(
            self.output, state.step, self.rt, model=self.model, optimizer=self.optimizer, state=trainer_state,
            trainable_set=self.strategy.trainable_set(), config=self.config.wire(),
            keep=self.config.output.keep_checkpoints,
            protect=state.best_model_step if self.keeps_best else None)
        location = locations.user_location(final, self.config.output.location) if final is not None else None
        if is_s3(self.config.output.location):
            mirror.commit_checkpoint(self.store, self.config.output.location, self.output, state.step, self.rt,
                                     self.config.output.keep_checkpoints)
        self.progress.checkpoint_saved(state.step, location, time.perf_counter() - started)

    # ---------------------------------------------------------------- the final model
    def final_model(self) -> None:
        """evaluation.finalModel best: bring back the weights of the best checkpoint (every rank loads them)."""
        step = self.state.best_model_step
        if self.keeps_best and step not in (-1, self.state.step):
            gates.restore_best(self.output, step, self.model, self.strategy.trainable_names(), self.config)

    def evaluate_final(self) -> dict | None:
        """spec.evaluation: the final model on evaluation.split (or the eval split); the block goes to the summary."""
        spec = self.config.evaluation
        if spec is None:
            return None
        evaluated = self.test_data or self.data
        if evaluated.eval is None:
            return None
        metrics = self._measure(evaluated)
        split = spec.split or self.config.dataset.eval or "eval"
        step = self.state.best_model_step if self.keeps_best and self.state.best_model_step >= 0 else self.state.step
        self.report.evaluation = gates.verdicts(spec, metrics, split, step)
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        log.info("final model (step %d) on the %s split: %s", step, split, shown)
        return self.report.evaluation

    def save_model(self) -> None:
        """The final model in ``<output>/model`` (export.py decides its form), then rank 0's export record."""
        output = self.config.output
        target = export.save_model(self.strategy, self.tokenizer, self.output, self.rt, output.merge_adapter)
        if self.rt.is_main:
            self._exported(export.write_record(target, self.config, export.form(self.strategy),
                                               push.lineage(self.config), self.report.run_state()))
            # The model is committed in the bucket like a checkpoint; its export record stays in the pod, so a
            # retry after a failed push resumes from the bucket's last checkpoint instead of pushing only.
            if is_s3(output.location):
                mirror.upload_part(self.store, output.location, target, target.name)

    def reuse_export(self) -> bool:
        """Take over the export record of an earlier attempt of this config, if there is one: its model is final."""
        exported = export.load_record(self.output, self.config)
        if exported is None:
            return False
        self.report.restore(exported.run)
        if self.rt.is_main:
            log.info("the model in %s/model was exported by an earlier attempt; not training again", self.output)
            self._exported(exported)
        return True

    def _exported(self, exported: export.Exported) -> None:
        self.exported = exported
        location = locations.user_location(self.output / "model", self.config.output.location)
        self.report.model_location = location
        self.report.outputs.append({"kind": "model", "uri": location, "digest": exported.digest})

    def push(self) -> None:
        """``output.push``: the exported model to its registry, from rank 0 (the others are done)."""
        if self.config.output.push and self.rt.is_main:
            self.report.outputs.append(push.push(self.config.output.push, self.output / "model", self.exported))

    def _fetched(self, spec, field: str, missing: type[TrainerError]):
        """``spec`` (the model or dataset spec) reading its ``s3://`` source from the local cache."""
        if not is_s3(spec.source):
            return spec
        before = self.store.downloaded
        local = cache.local_source(self.store, spec, field, missing)
        self._downloaded(field.split(".")[0], before)
        return local

    def _downloaded(self, source: str, before: int) -> None:
        """What the store fetched since ``before`` for ``source``: in the summary and the download counter."""
        fetched = self.store.downloaded - before
        self.report.downloads[source] = fetched
        self.telemetry.add(self.telemetry.download_bytes, fetched, source=source)


def _seed_everything(seed: int) -> None:
    """Python, NumPy and torch (all devices) generators: new heads initialise and dropout starts identically."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
