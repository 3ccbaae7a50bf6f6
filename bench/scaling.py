"""Cost scaling of our trainer: samples/s and memory against sequence length, batch size and model size.

    .venv/bin/python bench/scaling.py [--samples 320] [--json OUT]
    .venv/bin/python bench/scaling.py --runs full,full-dropout0 --lengths 128,256,512 --batches 32
    .venv/bin/python bench/scaling.py --runs full,lora,hybrid --shape bert-base --lengths 128 --batches 32

Data: MRPC pairs with both sentences repeated until the pair is longer than the target length, then truncated to
it (dataset.maxLength = L), so every example is exactly L tokens and dynamic padding and grouping change
nothing: the cost of L tokens is what is measured. Written to a temporary directory (never into the repo).
Sweeps (each point its own subprocess, full and partial interleaved at each point):
  sequence length 64 / 128 / 256 / 512 at batch 32
  batch size 8 / 16 / 32 at length 128
Every run trains on the same number of samples (--samples, default 320: 40 steps at batch 8, 10 at batch 32).
``--runs`` picks the configurations: full, partial (last:2), full-dropout0 (full with training.dropout: 0),
lora and hybrid (last:1), each at the job's defaults but for the batch. ``--shape`` picks the model:
all-MiniLM-L6-v2 (22.7M parameters), or a BERT-base-shaped one (12 layers of 768, 109M parameters) with random
weights and MiniLM's tokenizer, written to the temporary directory. The second is for cost only: what LoRA saves
(gradients and AdamW state of the weights it freezes, 12 bytes a parameter) grows with the model, while the
activations and the process itself (torch and its libraries: ~1.1 GiB before the model) do not.
Reported: samples/s (wall), samples per CPU-second of the step loop and CPU-ms per sample (robust to the shared
machine's load), each run's against the first's, and RSS when the last step ends (also as a ratio to the first).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (MODEL_PKG, MRPC, STRATEGIES, child_env, finish, machine, model_dir,  # noqa: E402
                     run_measured, snapshot_trainer, table, trainer_config, worker_cmd)

LENGTHS = [64, 128, 256, 512]
BATCHES = [8, 16, 32]


def make_data(target: Path, rows: int = 1000, dev_rows: int = 32) -> None:
    """train.tsv/dev.tsv in MRPC's layout with each sentence repeated 12 times (> 512 tokens per pair)."""
    target.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.tsv", rows), ("dev.tsv", dev_rows)):
        with open(MRPC / name, encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader)
            body = [r for _, r in zip(range(count), reader)]
        with open(target / name, "w", encoding="utf-8") as f:
            f.write("\t".join(header) + "\n")
            for r in body:
                r[3], r[4] = " ".join([r[3]] * 12), " ".join([r[4]] * 12)
                f.write("\t".join(r) + "\n")


RUNS = {"full": ("full", {}), "partial": ("partial", {}), "full-dropout0": ("full", {"dropout": 0.0}),
        "lora": ("lora", {}), "hybrid": ("hybrid", {})}
SHAPES = {"minilm": None,
          "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                        "intermediate_size": 3072}}


def make_model(target: Path, dims: dict) -> str:
    """A randomly initialised BERT with MiniLM's vocabulary and tokenizer and the given dimensions."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(model_dir())
    config.update({**dims, "num_labels": 2})
    BertForSequenceClassification(config).save_pretrained(target)
    AutoTokenizer.from_pretrained(model_dir()).save_pretrained(target)
    return str(target)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=320)
    p.add_argument("--runs", default="full,partial", help="comma-separated subset of " + ",".join(RUNS))
    p.add_argument("--lengths", type=ints, default=LENGTHS, help="at batch 32")
    p.add_argument("--batches", type=ints, default=BATCHES, help="at length 128")
    p.add_argument("--shape", choices=list(SHAPES), default="minilm")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    runs = args.runs.split(",")
    work = Path(tempfile.mkdtemp(prefix="fto-scaling-"))
    data = work / "data"
    make_data(data)
    model = make_model(work / "model", SHAPES[args.shape]) if SHAPES[args.shape] else MODEL_PKG
    log = work / "runs.log"
    info = machine()
    info["trainer"] = snapshot_trainer()
    print(json.dumps({"machine": info, "samples": args.samples, "shape": args.shape, "log": str(log)}), flush=True)
    points = [(L, 32) for L in args.lengths] + [(128, b) for b in args.batches if (128, b) not in
                                                 [(L, 32) for L in args.lengths]]
    records = []
    for length, batch in points:
        for run in runs:
            strategy, extra = RUNS[run]
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            cfg = trainer_config("scaling", str(out), STRATEGIES[strategy], data=str(data), model=model,
                                 batch_size=batch, max_steps=max(1, args.samples // batch), max_length=length,
                                 extra_training=extra)
            path = work / "cfg.json"
            path.write_text(json.dumps(cfg))
            r = run_measured(worker_cmd(path),
                             env=child_env(), log=log)
            r.update(run=run, length=length, batch=batch)
            records.append(r)
            print(json.dumps(r), flush=True)
    rows = []
    for length, batch in points:
        at = {r["run"]: r for r in records if (r["length"], r["batch"]) == (length, batch)}
        row = {"length": length, "batch": batch}
        for run, r in at.items():
            sps, cps = r.get("samples_per_s"), r.get("samples_per_cpu_s")
            row[f"{run} samples/s"] = sps
            row[f"{run} samples/CPU-s"] = cps
            row[f"{run} CPU-ms/sample"] = round(1000 / cps, 1) if cps else None
            row[f"{run} RSS MiB"] = r.get("train_peak_rss_mib") or r["peak_rss_mib"]
        for run in runs[1:]:
            if at.get(runs[0], {}).get("samples_per_cpu_s") and at.get(run, {}).get("samples_per_cpu_s"):
                row[f"{run}/{runs[0]} (CPU)"] = round(at[run]["samples_per_cpu_s"] / at[runs[0]]["samples_per_cpu_s"], 2)
            if row.get(f"{runs[0]} RSS MiB") and row.get(f"{run} RSS MiB"):
                row[f"{run}/{runs[0]} RSS"] = round(row[f"{run} RSS MiB"] / row[f"{runs[0]} RSS MiB"], 2)
        rows.append(row)
    print(f"\n{info['date']}  {info['cpus']} CPUs ({info['cpu']}), load {info['loadavg'][0]:.2f} at start; "
          f"{args.samples} samples per run; model {args.shape}")
    columns = ["length", "batch"]
    for suffix in ("samples/s", "samples/CPU-s", "CPU-ms/sample"):
        columns += [f"{run} {suffix}" for run in runs]
    columns += [f"{run}/{runs[0]} (CPU)" for run in runs[1:]] + [f"{run} RSS MiB" for run in runs]
    columns += [f"{run}/{runs[0]} RSS" for run in runs[1:]]
    print(table(rows, columns))
    finish(args.json, info, work, records=records, rows=rows)


if __name__ == "__main__":
    main()
