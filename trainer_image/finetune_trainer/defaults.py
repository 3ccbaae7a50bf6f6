"""The batch size and learning rate a job gets when it names none: by strategy, the rate scaled with the batch.

One learning rate cannot serve every strategy. At the 2e-5 the trainer used to default to, a `lora` or `hybrid`
adapter barely moved and the job ended at the majority class; an adapter's rate, on the other hand, is a large
step for every weight of a `full` job. The rates below were measured on GLUE MRPC with all-MiniLM-L6-v2, 3 epochs at batch 32,
scored on dev pairs no run selected on (BENCHMARKS.md §3, `bench/trainer_vs_baseline.py --epochs 3`).

The batch rule is the square root one for Adam-family optimizers: a step over k times the examples has a
gradient with 1/k of the variance, which carries sqrt(k) times the step size. It counts the examples one process
adds to a step (batchSize x gradientAccumulation): the same job file then gets the same rate on 1 or 8 GPUs,
as the Hugging Face Trainer's users expect. `full` at batch 8 gets 5e-5, the seed recipe's own rate.

`full` trains at batch 16, the others at 32. Every weight moving makes `full` the strategy that gains most from
more, smaller steps: on pairs of MRPC's train split that no run trained on, batch 16 (690 steps, lr 7.1e-5) scored
0.779-0.784 over three seeds (mean 0.781) where batch 32 (345 steps, lr 1e-4) scored 0.769-0.790 (mean 0.779;
BENCHMARKS.md, time to quality): a small edge, and a steadier one. The adapters' and `partial`'s rates were chosen
at 32, where they met their goals, and fewer optimizer steps is part of what those strategies save.
"""

from __future__ import annotations

import math

REFERENCE_BATCH = 32
LEARNING_RATES = {"full": 1e-4, "partial": 2e-4, "hybrid": 6e-4, "lora": 8e-4}  # by strategy.type, at batch 32
BATCH_SIZES = {"full": 16, "partial": 32, "hybrid": 32, "lora": 32}


def default_batch_size(strategy: str) -> int:
    return BATCH_SIZES[strategy]


def default_learning_rate(strategy: str, batch_size: int, gradient_accumulation: int = 1) -> float:
    examples = batch_size * gradient_accumulation
    rate = LEARNING_RATES[strategy] * math.sqrt(examples / REFERENCE_BATCH)
    return float(f"{min(rate, 1.0):.2g}")  # two significant digits: what a person would have written


def describe() -> str:
    """The rule in one line, for the CRD's description of training.learningRate."""
    rates = ", ".join(f"{strategy} {rate:.0e}".replace("e-0", "e-") for strategy, rate in LEARNING_RATES.items())
    return (f"Peak learning rate. Unset: by strategy at batch {REFERENCE_BATCH} ({rates}), times "
            f"sqrt(batchSize x gradientAccumulation / {REFERENCE_BATCH}); `finetune plan` shows the value.")


def describe_batch() -> str:
    """The rule in one line, for the CRD's description of training.batchSize."""
    sizes = ", ".join(f"{strategy} {size}" for strategy, size in BATCH_SIZES.items())
    return f"Unset: by strategy ({sizes})."
