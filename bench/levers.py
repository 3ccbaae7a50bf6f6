"""Where the speedup comes from: our trainer from a baseline-like configuration, one lever turned on per row.

    .venv/bin/python bench/levers.py [--steps 30] [--rounds 2] [--json OUT]

Each round runs, interleaved, the baseline (``shared/bench/seed_baseline.py max_steps:N``) and these
configurations of our trainer on MRPC with all-MiniLM-L6-v2, each as its own subprocess, every row adding one
lever to the row above:

  L0 baseline-like   full, batch 8, every pair padded to 128, no length grouping, 1 CPU thread
  L1 + threads       threads from the CPU quota (2 here; the baseline uses torch's default, also 2)
  L2 + dyn. padding  each batch padded to its own longest row (no grouping yet)
  L3 + grouping      length-grouped batches (groupByLength, the default)
  L4 + batch 32      the job default batch size (same number of optimizer steps, 4x the samples)
  L5 + CPU dropout   dropout masks drawn by cpu_dropout.py instead of torch (four elements per 64-bit draw)
  L6 + bf16          bf16 autocast, what precision ``auto`` picks on a CPU with AMX (on one without, this row
                     is L5 again): our ``full``
  L7 + partial       strategy partial last:2 (frozen-layer savings: no backward below block 4)

Levers without a switch in the trainer are emulated in the bench: fixed padding is ``_trainer_worker.py
--pad-to 128`` (patches the collate to pad every batch to 128, as the baseline's tokenizer call does); threads
are OMP_NUM_THREADS (the trainer honours it); rows before L5 run with ``--torch-dropout``, which turns the
trainer's own dropout masks off; rows before L6 set ``training.precision: fp32``. Reported: samples/s, the
step ratio to the row above and the ratio to the baseline of the same round (median over rounds), and the same
in samples per CPU-second of the training loop (robust to the shared machine's load; it cannot show the threads
lever, which buys wall time with CPU).
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

LEVERS = [
    ("L0 baseline-like (b8, pad 128, no grouping, 1 thread)",
     dict(batch=8, pad=128, group=False, threads=1, torch_dropout=True, fp32=True)),
    ("L1 + threads from CPU quota (2)",
     dict(batch=8, pad=128, group=False, threads=None, torch_dropout=True, fp32=True)),
    ("L2 + dynamic padding", dict(batch=8, pad=None, group=False, threads=None, torch_dropout=True, fp32=True)),
    ("L3 + length grouping", dict(batch=8, pad=None, group=True, threads=None, torch_dropout=True, fp32=True)),
    ("L4 + batch 32 (job default)", dict(batch=32, pad=None, group=True, threads=None, torch_dropout=True, fp32=True)),
    ("L5 + CPU dropout masks", dict(batch=32, pad=None, group=True, threads=None, fp32=True)),
    ("L6 + bf16 autocast on AMX (our full)", dict(batch=32, pad=None, group=True, threads=None)),
    ("L7 + partial last:2", dict(batch=32, pad=None, group=True, threads=None, strategy="partial")),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fto-levers-"))
    log = work / "runs.log"
    info = machine()
    info["trainer"] = snapshot_trainer()
    print(json.dumps({"machine": info, "steps": args.steps, "rounds": args.rounds, "log": str(log)}), flush=True)
    records = []
    for rnd in range(args.rounds):
        r = run_measured(baseline_cmd(f"max_steps:{args.steps}"), env=child_env(), log=log)
        r.update(name="baseline (HF Trainer, b8, pad 128)", round=rnd, ratio=1.0)
        base = r["samples_per_s"]
        records.append(r)
        print(json.dumps(r), flush=True)
        for name, lever in LEVERS:
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            cfg = trainer_config("lever", str(out), STRATEGIES[lever.get("strategy", "full")],
                                 batch_size=lever["batch"], max_steps=args.steps, group_by_length=lever["group"],
                                 extra_training={"precision": "fp32"} if lever.get("fp32") else None)
            path = work / "cfg.json"
            path.write_text(json.dumps(cfg))
            cmd = worker_cmd(path)
            if lever["pad"]:
                cmd += ["--pad-to", str(lever["pad"])]
            if lever.get("torch_dropout"):
                cmd += ["--torch-dropout"]
            r = run_measured(cmd, env=child_env(lever["threads"]), log=log)
            r.update(name=name, round=rnd)
            if r.get("samples_per_s") and base:
                r["ratio"] = round(r["samples_per_s"] / base, 2)
            records.append(r)
            print(json.dumps(r), flush=True)
    names = ["baseline (HF Trainer, b8, pad 128)"] + [n for n, _ in LEVERS]
    rows, previous = [], None

    def step_ratio(rs, key):
        """This row / the row above, per round, then the median."""
        ratios = []
        for r in rs:
            above = next((x for x in records if x["name"] == previous and x["round"] == r["round"]
                          and x.get(key)), None)
            if above and r.get(key):
                ratios.append(r[key] / above[key])
        return round(median(ratios), 2) if ratios else None

    for name in names:
        rs = [r for r in records if r["name"] == name and r.get("rc") == 0 and r.get("samples_per_s")]
        if not rs:
            rows.append({"configuration": name, "samples/s": None})
            continue
        base = {r["round"]: r for r in records if r["name"] == names[0]}
        cpu_x = [r["samples_per_cpu_s"] / base[r["round"]]["samples_per_cpu_s"] for r in rs
                 if r.get("samples_per_cpu_s") and base.get(r["round"], {}).get("samples_per_cpu_s")]
        rows.append({"configuration": name, "samples/s": median([r["samples_per_s"] for r in rs]),
                     "x row above": step_ratio(rs, "samples_per_s") if previous else None,
                     "x baseline": median([r["ratio"] for r in rs]),
                     "per-round x baseline": " ".join(f"{r['ratio']:.2f}" for r in rs),
                     "samples/CPU-s": median([r["samples_per_cpu_s"] for r in rs if r.get("samples_per_cpu_s")]
                                             or [0]),
                     "x row above (CPU)": step_ratio(rs, "samples_per_cpu_s") if previous else None,
                     "x baseline (CPU)": round(median(cpu_x), 2) if cpu_x else None,
                     "threads": rs[0].get("threads"), "peak RSS MiB": max(r["peak_rss_mib"] for r in rs)})
        previous = name
    print(f"\n{info['date']}  {info['cpus']} CPUs ({info['cpu']}), load {info['loadavg'][0]:.2f} at start; "
          f"{args.steps} optimizer steps per run, {args.rounds} rounds; trainer {info['trainer']['sha256']}")
    print(table(rows, ["configuration", "samples/s", "x row above", "x baseline", "per-round x baseline",
                       "samples/CPU-s", "x row above (CPU)", "x baseline (CPU)", "threads", "peak RSS MiB"]))
    finish(args.json, info, work, records=records, rows=rows)


if __name__ == "__main__":
    main()
