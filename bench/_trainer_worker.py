"""One measured run of our trainer (``finetune_trainer.train.run``), as a child process of a bench script.

    python bench/_trainer_worker.py CONFIG.json [--pad-to N] [--torch-dropout]

Prints one JSON line: the summary's metrics (samplesPerSecond, tokensPerSecond, evalAccuracy, evalF1, ...),
trainable/total parameters, CPU threads and wall seconds of the whole run (load, train, eval, save).

``--pad-to N`` is a bench-only lever: the trainer always pads each batch to its own longest row (dynamic
padding) and has no switch to turn that off, so this patches the task's collate to pad every batch to N tokens,
as the baseline does. ``--torch-dropout`` turns off the trainer's own CPU dropout masks (cpu_dropout.install),
to measure them as a lever. Nothing else of the trainer is touched.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--pad-to", type=int, default=None)
    parser.add_argument("--torch-dropout", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    started = time.perf_counter()
    import torch

    from finetune_trainer import train
    from finetune_trainer.config import TrainerConfig

    if args.torch_dropout:
        from finetune_trainer import cpu_dropout

        cpu_dropout.install = lambda model: 0
    if args.pad_to:
        from transformers import DataCollatorWithPadding

        from finetune_trainer.tasks.base import TaskAdapter

        def fixed_collate(self, tokenizer, features):
            rows = [{k: v for k, v in f.items() if k != "length"} for f in features]
            return DataCollatorWithPadding(tokenizer, padding="max_length", max_length=args.pad_to,
                                           return_tensors="pt")(rows)

        TaskAdapter.collate = fixed_collate  # sequence classification uses the base collate
    # CPU seconds inside the step loop (the scope of samplesPerSecond): comparable on a busy shared machine.
    cpu = {"seconds": 0.0, "samples": 0}
    original_step = train.Recipe._step

    def step(self, stream, window, meter):
        started = time.process_time()
        loss = original_step(self, stream, window, meter)
        cpu["seconds"] += time.process_time() - started
        cpu["samples"] = meter.samples
        cpu["train_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return loss

    train.Recipe._step = step
    # Time to quality: when each evaluation finished, in wall and process CPU seconds (all threads) since start.
    evaluations = []
    original_measure = train.Recipe._measure

    def measure(self, data):
        metrics = original_measure(self, data)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        evaluations.append({"step": self.state.step, "accuracy": metrics.get("eval_accuracy"),
                            "wall_s": round(time.perf_counter() - started, 2),
                            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)})
        return metrics

    train.Recipe._measure = measure
    config = TrainerConfig.model_validate(json.loads(args.config.read_text()))
    summary = train.run(config)
    metrics = summary.get("metrics", {})
    params = summary.get("parameters") or {}
    print(json.dumps({
        "samples_per_s": metrics.get("samplesPerSecond"), "tokens_per_s": metrics.get("tokensPerSecond"),
        "accuracy": metrics.get("evalAccuracy"), "f1": metrics.get("evalF1"), "train_loss": metrics.get("trainLoss"),
        "trainable": params.get("trainable"), "total": params.get("total"), "threads": torch.get_num_threads(),
        "batch_size": config.training.batch_size,
        "steps": summary.get("progress", {}).get("step") if isinstance(summary.get("progress"), dict) else None,
        "run_wall_s": round(time.perf_counter() - started, 2), "train_cpu_s": round(cpu["seconds"], 2),
        "samples_per_cpu_s": round(cpu["samples"] / cpu["seconds"], 3) if cpu["seconds"] else None,
        "train_peak_rss_mib": round(cpu.get("train_peak_rss_mib", 0), 1), "evaluations": evaluations,
    }), flush=True)


if __name__ == "__main__":
    main()
