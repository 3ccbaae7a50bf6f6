"""Run ``shared/bench/seed_baseline.py`` unchanged, timing its ``Trainer.train`` call in wall and CPU seconds.

    python bench/_baseline_shim.py SEED_BASELINE.py MODEL_DIR DATA_DIR BUDGET

The script runs as ``__main__`` with its own arguments and prints its JSON line; this shim then prints a second
one with ``train_cpu_s`` (process CPU seconds, all threads, spent inside Trainer.train) and ``samples_per_cpu_s``,
the figure that stays comparable when the shared machine is busy (see BENCHMARKS.md, "Method").
"""

import json
import runpy
import sys
import time

import transformers

timing = {}
original = transformers.Trainer.train


def train(self, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = original(self, *args, **kwargs)
    timing["train_cpu_s"] = time.process_time() - cpu
    timing["train_wall_s"] = time.perf_counter() - wall
    timing["samples"] = out.global_step * self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
    return out


transformers.Trainer.train = train
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
print(json.dumps({"train_cpu_s": round(timing["train_cpu_s"], 2),
                  "samples_per_cpu_s": round(timing["samples"] / timing["train_cpu_s"], 3)}), flush=True)
