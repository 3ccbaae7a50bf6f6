"""Our trainer against the plain Hugging Face Trainer baseline on GLUE MRPC with all-MiniLM-L6-v2 (issue 8).

    .venv/bin/python bench/trainer_vs_baseline.py                 # speed: same optimizer steps, interleaved
    .venv/bin/python bench/trainer_vs_baseline.py --epochs 3      # accuracy and F1 after 3 epochs
    options: --steps N (speed, default 40) --rounds R (default 2) --only baseline,full,...  --json OUT
             --seeds 42,1,2 (our runs once per training.seed; the baseline script's seed is fixed at 42)
             --no-baseline (with --epochs: our runs alone, for the absolute accuracy goals)

Speed mode runs, in each round and in this order, ``shared/bench/seed_baseline.py max_steps:N`` (batch 8,
every pair padded to 128, lr 5e-5, fp32, torch's default threads) and our trainer for the same N optimizer steps
at the job's defaults (batch by strategy: full 16, the others 32; dynamic padding with length grouping;
threads from the CPU quota; precision auto: bf16 on a CPU with AMX) for ``full``, ``partial last:2``, ``hybrid``
(last:1 full + LoRA r=8 on the 5 blocks below) and ``lora`` (r=8 on every block, head trains). ``--only
baseline,full@8`` adds ``full`` at batch 8, the like-for-like point (same steps and samples as the baseline; levers.py row L3 is the same configuration); ``full-dropout0`` and
``partial-dropout0`` are the same runs with ``training.dropout: 0``. Every run is its own subprocess; peak RSS is that child's ``ru_maxrss``. samples/s is what each
reports: the baseline's ``train_samples_per_second`` (samples / train() wall time), our summary's
``samplesPerSecond`` (samples / summed step time, data loading included, eval and checkpoints excluded).
Ratios are against the baseline of the same round; the table shows per-round ratios' median. Because the
machine is shared, each run also reports samples per CPU-second of its training loop (process CPU time of all
its threads inside Trainer.train for the baseline, inside the step loop for ours): wall-clock ratios swing
with the neighbours' load, CPU-time ratios hardly do.

Accuracy mode trains each for 3 epochs and evaluates on dev.tsv (408 pairs), which no run selects on. The
baseline's learning rate is its script's (5e-5 at batch 8); ours are the trainer's defaults for each strategy
and batch (finetune_trainer/defaults.py), as a user who gives none gets them. It leads with time to quality:
the whole processes (load, tokenise, train, evaluate) of the baseline and of our default ``full`` job, wall and
CPU seconds as ratios, and whether ours reached the baseline's accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (STRATEGIES, finish, baseline_cmd, child_env, machine, median, run_measured,  # noqa: E402
                     snapshot_trainer, table, trainer_config, worker_cmd)

# Our runs: name -> (strategy, batch size (None: the strategy's default), training fields beyond the defaults).
# The last five only with --only: full@8 is the like-for-like point (levers.py row L3), full@32 the batch the
# other strategies default to; *-dropout0 set training.dropout: 0; hybrid-last2 trains the last two blocks fully.
RUNS = {
    "full": ("full", None, {}), "partial": ("partial", None, {}), "hybrid": ("hybrid", None, {}),
    "lora": ("lora", None, {}), "full@8": ("full", 8, {}), "full@32": ("full", 32, {}),
    "full-dropout0": ("full", None, {"dropout": 0.0}), "partial-dropout0": ("partial", None, {"dropout": 0.0}),
    "hybrid-last2": ("hybrid-last2", None, {}),
}
ORDER = ["baseline", *RUNS]


def run_one(name: str, budget: dict, work: Path, log: Path, seed: int) -> dict:
    if name == "baseline":
        arg = f"max_steps:{budget['steps']}" if "steps" in budget else f"epochs:{budget['epochs']:g}"
        r = run_measured(baseline_cmd(arg), env=child_env(), log=log)
        r["batch"] = 8
        return r
    strategy, batch, extra = RUNS[name]
    out = work / name.replace("@", "_b")
    shutil.rmtree(out, ignore_errors=True)
    cfg = trainer_config(name, str(out), STRATEGIES[strategy], batch_size=batch, max_steps=budget.get("steps"),
                         epochs=budget.get("epochs", 3), extra_training={"seed": seed, **extra})
    path = work / f"{name.replace('@', '_b')}.json"
    path.write_text(json.dumps(cfg))
    r = run_measured(worker_cmd(path),
                     env=child_env(), log=log)
    shutil.rmtree(out, ignore_errors=True)
    r["batch"] = r.get("batch_size", batch)
    r["plan_estimate_mib"] = plan_estimate_mib(path)
    return r


# `finetune plan`'s training-memory estimate of a config, in a child (the measured runs' peaks stay their own).
PLAN = ("import json, sys; from finetune_trainer.config import TrainerConfig; from finetune_trainer.plan import plan; "
        "print(json.dumps(plan(TrainerConfig.model_validate_json(open(sys.argv[1]).read()))['memory']))")


def plan_estimate_mib(config: Path) -> float | None:
    result = run_measured([sys.executable, "-c", PLAN, str(config)], env=child_env())
    return round(result["totalBytes"] / 2**20, 1) if "totalBytes" in result else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--epochs", type=float, default=None, help="accuracy mode: train this many epochs")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(ORDER))
    p.add_argument("--json", type=Path, default=None, help="also write every run's record here")
    p.add_argument("--seeds", default="42", help="our runs' training.seed values, one run each (default 42)")
    p.add_argument("--no-baseline", action="store_true",
                   help="accuracy mode only: skip the baseline (for goals that are absolute accuracies)")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.only.split(",") if args.only else ORDER[:5]
    if args.no_baseline and args.epochs is None:
        p.error("--no-baseline: speed is a ratio to the baseline of the same round; use it with --epochs")
    if "baseline" not in names and not args.no_baseline:
        names = ["baseline", *names]
    rounds = args.rounds or (2 if args.epochs is None else 1)
    budget = {"epochs": args.epochs} if args.epochs else {"steps": args.steps}
    work = Path(tempfile.mkdtemp(prefix="fto-bench-"))
    log = work / "runs.log"
    info = machine()
    info["trainer"] = snapshot_trainer()
    print(json.dumps({"machine": info, "budget": budget, "rounds": rounds, "log": str(log)}), flush=True)
    records = []
    for rnd in range(rounds):
        base = None
        for name, seed in [(n, s) for n in names for s in ([42] if n == "baseline" else seeds)]:
            r = run_one(name, budget, work, log, seed)
            r.update(name=name, round=rnd, seed=seed)
            if name == "baseline":
                base = r
            if base and r.get("samples_per_s") and base.get("samples_per_s"):
                r["ratio"] = round(r["samples_per_s"] / base["samples_per_s"], 2)
            if base and r.get("samples_per_cpu_s") and base.get("samples_per_cpu_s"):
                r["cpu_ratio"] = round(r["samples_per_cpu_s"] / base["samples_per_cpu_s"], 2)
            records.append(r)
            print(json.dumps(r), flush=True)
    rows = []
    for name in names:
        rs = [r for r in records if r["name"] == name and r["rc"] == 0]
        if not rs:
            rows.append({"run": name, "note": "failed"})
            continue
        rows.append({
            "run": name, "batch": rs[0]["batch"],
            "samples/s": median([r["samples_per_s"] for r in rs]),
            "x baseline": median([r.get("ratio", 1.0) for r in rs]),
            "per-round x": " ".join(f"{r.get('ratio', 1.0):.2f}" for r in rs),
            "samples/CPU-s": median([r["samples_per_cpu_s"] for r in rs]) if rs[0].get("samples_per_cpu_s") else None,
            "x baseline (CPU)": median([r.get("cpu_ratio", 1.0) for r in rs]),
            "per-round x (CPU)": " ".join(f"{r.get('cpu_ratio', 1.0):.2f}" for r in rs),
            "peak RSS MiB": max(r["peak_rss_mib"] for r in rs),
            "RSS at last step MiB": max(r.get("train_peak_rss_mib") or 0 for r in rs) or None,
            "plan estimate MiB": rs[0].get("plan_estimate_mib"),
            "trainable": rs[0].get("trainable"),
            "accuracy": _mean(rs, "accuracy"), "f1": _mean(rs, "f1"),
            "per-seed accuracy": " ".join(f"{r['seed']}:{r['accuracy']:.4f}" for r in rs if r.get("accuracy")),
            "wall s": median([r["wall_s"] for r in rs]),
        })
    cols = ["run", "batch", "samples/s", "x baseline", "per-round x", "samples/CPU-s", "x baseline (CPU)",
            "per-round x (CPU)", "peak RSS MiB", "RSS at last step MiB", "plan estimate MiB", "trainable", "accuracy",
            "f1", "per-seed accuracy", "wall s"]
    print(f"\n{info['date']}  {info['cpus']} CPUs ({info['cpu']}), load {info['loadavg'][0]:.2f} at start; "
          f"budget {budget}; trainer snapshot {info['trainer']['sha256']}")
    print(table(rows, cols))
    quality = [time_to_quality(records, seed) for seed in seeds] if "epochs" in budget else []
    for q in filter(None, quality):
        print("\ntime to quality (whole processes, default full job / baseline): " + json.dumps(q))
    finish(args.json, info, work, budget=budget, records=records, rows=rows, time_to_quality=quality)


def _mean(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return round(sum(values) / len(values), 4) if values else None


def time_to_quality(records: list[dict], seed: int) -> dict | None:
    """Our default ``full`` job (training.seed ``seed``) against the baseline, each a whole process from start to
    exit: the headline figure is only a speed-up if ours ended at least as accurate."""
    base = next((r for r in records if r["name"] == "baseline" and r["rc"] == 0), None)
    ours = next((r for r in records if r["name"] == "full" and r["seed"] == seed and r["rc"] == 0), None)
    if not (base and ours and base.get("accuracy") is not None and ours.get("accuracy") is not None):
        return None
    # The first evaluation (one per epoch) at or above the baseline's final accuracy; the baseline's clock stops
    # at its exit, ours there (or at our exit, if only the final model got there).
    # Compared at the baseline's rounding (4 places): 329/408 is 0.806373 here and 0.8064 there.
    reached = next((e for e in ours.get("evaluations", []) if round(e["accuracy"] or 0, 4) >= base["accuracy"]), None)
    return {"seed": seed, "whole_run": {"wall_ratio": round(ours["wall_s"] / base["wall_s"], 3),
                          "cpu_ratio": round(ours["cpu_s"] / base["cpu_s"], 3)},
            "to_baseline_accuracy": reached and {"step": reached["step"],
                                                 "wall_ratio": round(reached["wall_s"] / base["wall_s"], 3),
                                                 "cpu_ratio": round(reached["cpu_s"] / base["cpu_s"], 3)},
            "baseline": {k: base[k] for k in ("accuracy", "f1", "wall_s", "cpu_s")},
            "full": {k: ours[k] for k in ("accuracy", "f1", "wall_s", "cpu_s", "evaluations")}}


if __name__ == "__main__":
    main()
