"""GPU throughput: a Llama-shaped ~1.1B causal LM (random weights, built from a config, nothing downloaded),
trained by a plain Hugging Face Trainer and by our trainer (full, partial, lora) on the same synthetic data, in
one command. One JSON line per run, then a summary table.

    python bench/gpu_llama.py                      # on the GPU machine (H200): ~4-5 minutes
    python bench/gpu_llama.py --tiny               # anywhere, CPU included: hidden 64, 2 layers, a few steps
    options: --out DIR (results.json and the table also go there), --runs hf,full,partial,lora (+ full-nogroup),
             --steps N (measured steps, default 10), --warmup W (default 3), --keep (keep the model/data dir)

What runs (each in its own subprocess, so GPU memory is clean between runs):
  build         word list (~32k pseudo-words), a WordLevel tokenizer over it (the ``tokenizers`` library, saved
                with the model as a PreTrainedTokenizerFast), LlamaConfig(hidden 2048, 16 layers, 32 heads, 8 KV
                heads, intermediate 8192, vocab 32000) with random bf16 weights, and jsonl data: 2,000 texts of
                128..2047 random words (mean ~1,090 tokens) plus 8 eval texts.
  hf            transformers.Trainer: bf16=True (autocast, fp32 master weights), optim="adamw_torch_fused",
                every text padded to 2048 (padding="max_length"), 16 rows per step (32,768 padded tokens, ~17.5k
                real), sdpa attention, no gradient checkpointing, max_grad_norm 1.0.
  full          our trainer, train.run(TrainerConfig): strategy full, 16 texts per step (training.batchSize counts
                texts) packed into rows of at most 2048 tokens: at most 16 x 2048 = 32,768 tokens in a step, the
                HF run's bound, ~17.4k real on average; precision auto (= bf16 autocast on the H200, fp32 master
                weights), fused AdamW (the trainer's default on every device), sdpa.
                (Length grouping runs the longest batch first: with batchSize 30, as in the first GPU session,
                step 1 held 30 texts of ~2,000 tokens = ~61k tokens, which ran out of memory for full and lora.)
  partial       the same, strategy partial layers last:4 (blocks 12-15 + lm_head train).
  lora          the same, strategy lora r=8 alpha=16 dropout 0.05 on every projection of every block (+ lm_head).
  full-compile  (only with --runs) full with the model wrapped in torch.compile(dynamic=True) by the bench (the
                trainer has no switch for it): what fusing RMSNorm/SwiGLU/RoPE/residual kernels is worth. Compiling
                takes 1-2 minutes of the run; --warmup 4 or more.
  full-nogroup  (only with --runs) full with training.groupByLength false: random batches pack into 2048-token
                rows at ~0.89 efficiency, length-grouped ones at ~0.96 (rows are as wide as the batch's longest).

Timing: steady state only. The first W optimizer steps are warmup; the clock runs from a
torch.cuda.synchronize() after step W to one after step W+N. Tokens are real tokens (padding excluded). Our
trainer's end-of-run checkpoint and final-model save are turned into no-ops in the bench process (they write
~17 GB for a 1.1B model and are not part of the step loop); its end-of-run eval runs on the 8 eval texts.

MFU = model FLOPs per second / peak, attention excluded (conservative), with N = matmul parameters (blocks +
lm_head; the embedding lookup does no FLOPs):
  full, hf:  6 * N * tokens
  partial:   (2 * N  +  4 * N_top) * tokens   N_top = matmul params of the trained blocks + lm_head
             (forward through everything; activation and weight gradients only from the lowest trained block up)
  lora:      (4 * N  +  2 * N_head + 6 * N_lora) * tokens  (activation gradients flow through every block; weight
             gradients only for the adapters and lm_head)
``mfu_attn`` adds causal attention FLOPs (6 * layers * hidden * sum(len^2) / 2 per step... see attention_flops) for
full and hf. Peak: 989 TFLOP/s (H200 dense bf16, spec; FINETUNE_PEAK_FLOPS overrides) and the ~790 TFLOP/s a
plain bf16 matmul measures on this H200 (``mfu_vs_matmul``).

Imports only what each part needs: the parent imports nothing heavy; ``hf`` needs torch + transformers
(+ accelerate, which Trainer requires); our trainer also needs pydantic, datasets, peft and prometheus_client
(missing ones are reported and that run is skipped, the others still run).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEAK_SPEC = float(os.environ.get("FINETUNE_PEAK_FLOPS", 989e12))
PEAK_MATMUL = 790e12
RUNS = ["hf", "full", "partial", "lora"]  # also available: full-nogroup

FULL_SHAPE = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                  intermediate_size=8192, vocab_size=32000, max_position_embeddings=4096)
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=2000, max_position_embeddings=256)
SPECIALS = ["[PAD]", "[UNK]", "<s>", "</s>"]


def sizes(tiny: bool) -> dict:
    if tiny:
        return dict(shape=TINY_SHAPE, seq=128, min_words=8, records=240, hf_batch=4, our_batch=8, partial="last:1",
                    lr=1e-3)
    return dict(shape=FULL_SHAPE, seq=2048, min_words=128, records=2000, hf_batch=16, our_batch=16,
                partial="last:4", lr=1e-4)


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "tokenizers", "peft", "datasets", "pydantic",
                 "prometheus_client", "safetensors"):
        try:
            module = importlib.import_module(name)
            found[name] = getattr(module, "__version__", None) or importlib.metadata.version(name)
        except Exception as exc:  # noqa: BLE001 - missing or broken: say so
            found[name] = f"MISSING ({type(exc).__name__})"
    try:
        import torch

        found["cuda"] = torch.version.cuda
        found["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        pass
    return found


# ----------------------------------------------------------------------------------------------------- build
def build(work: Path, tiny: bool) -> dict:
    """Word list, tokenizer, random model, jsonl data under ``work``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    s = sizes(tiny)
    shape = s["shape"]
    rng = random.Random(1234)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "st", "qu", "sh", "ch"]
    words: set[str] = set()
    while len(words) < shape["vocab_size"] - len(SPECIALS):
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(words))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="[PAD]",
                                        unk_token="[UNK]")
    model_dir = work / "model"
    tokenizer.save_pretrained(model_dir)

    config = LlamaConfig(**shape, bos_token_id=2, eos_token_id=3, pad_token_id=0, tie_word_embeddings=False,
                         rms_norm_eps=1e-5, use_cache=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    del model

    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    word_list = sorted(words)
    max_words = s["seq"] - 1  # + the EOS token = seq

    def text(n: int) -> str:
        return " ".join(rng.choices(word_list, k=n))

    lengths = []
    with (data_dir / "train.jsonl").open("w") as f:
        for _ in range(s["records"]):
            n = rng.randint(s["min_words"], max_words)
            lengths.append(n + 1)
            f.write(json.dumps({"text": text(n)}) + "\n")
    with (data_dir / "dev.jsonl").open("w") as f:
        for _ in range(8):
            f.write(json.dumps({"text": text(rng.randint(s["min_words"], max_words))}) + "\n")
    return {"model_dir": str(model_dir), "data_dir": str(data_dir), "parameters": params,
            "mean_tokens": sum(lengths) / len(lengths), "records": len(lengths)}


# ----------------------------------------------------------------------------------------------------- FLOPs
def matmul_params(shape: dict) -> dict:
    h, L, i, V = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"], shape["vocab_size"]
    kv = shape["num_key_value_heads"] * (h // shape["num_attention_heads"])
    block = h * (h + 2 * kv) + h * h + 3 * h * i
    return {"block": block, "blocks": L * block, "head": V * h, "N": L * block + V * h, "layers": L}


def lora_params(shape: dict, r: int = 8) -> int:
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = shape["num_key_value_heads"] * (h // shape["num_attention_heads"])
    per_block = r * ((h + h) + (h + kv) * 2 + (h + h) + (h + i) * 2 + (i + h))  # q, k, v, o, gate, up, down
    return shape["num_hidden_layers"] * per_block


def flops_per_token(run: str, shape: dict, top_blocks: int) -> float:
    m = matmul_params(shape)
    if run in ("hf", "full", "full-nogroup", "full-compile"):
        return 6 * m["N"]
    if run == "partial":
        top = top_blocks * m["block"] + m["head"]
        return 2 * m["N"] + 4 * top
    if run == "lora":
        return 4 * m["N"] + 2 * m["head"] + 6 * lora_params(shape)
    raise ValueError(run)


def attention_flops(shape: dict, sum_sq_len: float) -> float:
    """Causal attention matmuls (QK^T and AV), forward + backward: 3 * 2 matmuls * 2 FLOPs * hidden * len^2 / 2
    per layer per sequence."""
    return 6 * shape["num_hidden_layers"] * shape["hidden_size"] * sum_sq_len


def figures(run: str, shape: dict, tokens: int, seconds: float, sum_sq: float, top_blocks: int) -> dict:
    tps = tokens / seconds
    model_flops = flops_per_token(run, shape, top_blocks) * tps
    out = {"tokens_per_s": round(tps, 1), "tflops": round(model_flops / 1e12, 1),
           "mfu": round(model_flops / PEAK_SPEC, 4), "mfu_vs_matmul": round(model_flops / PEAK_MATMUL, 4)}
    if run in ("hf", "full", "full-nogroup", "full-compile"):
        out["mfu_attn"] = round((model_flops + attention_flops(shape, sum_sq) / seconds) / PEAK_SPEC, 4)
    return out


# ----------------------------------------------------------------------------------------------------- workers
def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def worker_hf(args, assets: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    s = sizes(args.tiny)
    seq = s["seq"]
    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(assets["model_dir"])
    rows = []
    with open(Path(assets["data_dir"]) / "train.jsonl") as f:
        for line in f:
            ids = tok(json.loads(line)["text"] + tok.eos_token, truncation=True, max_length=seq,
                      padding="max_length")
            ids["labels"] = [t if m else -100 for t, m in zip(ids["input_ids"], ids["attention_mask"])]
            rows.append({k: torch.tensor(v) for k, v in ids.items()})
    model = AutoModelForCausalLM.from_pretrained(assets["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    total_steps = args.warmup + args.steps
    marks: dict[str, float] = {}
    real: list = []
    sq: list = []

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kw):
            if state.global_step in (args.warmup, total_steps):
                sync()
                marks[state.global_step] = time.perf_counter()

    class CountingTrainer(Trainer):
        def training_step(self, model, inputs, *rest, **kw):
            lens = inputs["attention_mask"].sum(1)  # stays on the device: no sync
            real.append(lens.sum())
            sq.append((lens.double() ** 2).sum())
            return super().training_step(model, inputs, *rest, **kw)

    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=s["hf_batch"], max_steps=total_steps,
        learning_rate=s["lr"], bf16=cuda, optim="adamw_torch_fused", gradient_checkpointing=False,
        logging_steps=10 ** 6, save_strategy="no", report_to=[], disable_tqdm=True, seed=42,
        dataloader_num_workers=2 if cuda else 0, warmup_steps=1)
    trainer = CountingTrainer(model=model, args=targs, train_dataset=rows, callbacks=[Clock()])
    trainer.train()
    seconds = marks[total_steps] - marks[args.warmup]
    tokens = int(sum(t.item() for t in real[args.warmup:total_steps]))
    sum_sq = float(sum(t.item() for t in sq[args.warmup:total_steps]))
    padded = s["hf_batch"] * seq * args.steps
    out = {"tokens": tokens, "seconds": round(seconds, 3), "step_s": round(seconds / args.steps, 3),
           "tokens_per_step": tokens // args.steps, "padding_efficiency": round(tokens / padded, 3),
           "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "batch": f"{s['hf_batch']} rows x {seq}"}
    out.update(figures("hf", s["shape"], tokens, seconds, sum_sq, 0))
    out["padded_tokens_per_s"] = round(padded / seconds, 1)
    return out


def worker_ours(args, assets: dict, run: str) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "trainer_image"))
    _datasets_fingerprint_fallback()
    from finetune_trainer import train
    from finetune_trainer.config import TrainerConfig
    from finetune_trainer.tasks.causal_lm import pack

    s = sizes(args.tiny)
    if args.our_batch:
        s["our_batch"] = args.our_batch
    strategy = {"full": {"type": "full"}, "full-nogroup": {"type": "full"}, "full-compile": {"type": "full"},
                "partial": {"type": "partial", "layers": s["partial"]},
                "lora": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.05}}}[run]
    total_steps = args.warmup + args.steps
    out_dir = Path(tempfile.mkdtemp(prefix=f"gpu-{run}-"))
    config = TrainerConfig.model_validate({
        "name": f"gpu-{run}", "model": {"source": assets["model_dir"]}, "task": "causal-lm",
        "dataset": {"source": assets["data_dir"], "train": "train", "eval": "dev", "columns": {"text": ["text"]},
                    "maxLength": s["seq"]},
        "strategy": strategy,
        "training": {"epochs": 1, "maxSteps": total_steps, "batchSize": s["our_batch"], "learningRate": s["lr"],
                     "logEvery": 10 ** 5, "packing": True, "groupByLength": run != "full-nogroup"},
        "output": {"location": str(out_dir)}, "metricsPort": 0,
    })
    stats = {"steps": 0, "tokens": 0, "sum_sq": 0.0, "cells": 0, "t0": None, "t1": None}
    original_step = train.Recipe._step

    def timed_step(self, stream, window, meter):
        loss = original_step(self, stream, window, meter)
        stats["steps"] += 1
        step = stats["steps"]
        if step == args.warmup:
            sync()
            stats["t0"] = time.perf_counter()
            stats["lengths"] = list(self.data.train["length"])
            stats["trainable"] = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        elif step > args.warmup:
            lengths = stats["lengths"]
            for batch in window:
                ls = [lengths[i] for i in batch]
                stats["tokens"] += sum(ls)
                stats["sum_sq"] += sum(x * x for x in ls)
                packed = pack([{"input_ids": range(x)} for x in ls], max(s["seq"], max(ls)))
                stats["cells"] += len(packed) * max(sum(len(f["input_ids"]) for f in r) for r in packed)
            if step == total_steps:
                sync()
                stats["t1"] = time.perf_counter()
        return loss

    train.Recipe._step = timed_step
    if run == "full-compile":
        original_wrap = train.Recipe._wrap

        def compiled_wrap(self):
            return torch.compile(original_wrap(self), dynamic=True)

        train.Recipe._wrap = compiled_wrap
    train.Recipe.save_checkpoint = lambda self: None
    train.Recipe.save_model = lambda self: None
    summary = train.run(config)
    shutil.rmtree(out_dir, ignore_errors=True)
    if summary.get("phase") != "Succeeded" or stats["t1"] is None:
        raise RuntimeError(f"our trainer did not finish the measured steps: {summary.get('message')}")
    seconds = stats["t1"] - stats["t0"]
    top_blocks = int(s["partial"].split(":")[1]) if run == "partial" else 0
    out = {"tokens": stats["tokens"], "seconds": round(seconds, 3), "step_s": round(seconds / args.steps, 3),
           "tokens_per_step": stats["tokens"] // args.steps,
           "padding_efficiency": round(stats["tokens"] / max(1, stats["cells"]), 3),
           "trainable": stats["trainable"], "batch": f"{s['our_batch']} texts packed",
           "trainer_tokens_per_s": summary["metrics"].get("tokensPerSecond")}
    out.update(figures(run, s["shape"], stats["tokens"], seconds, stats["sum_sq"], top_blocks))
    return out


def _datasets_fingerprint_fallback() -> None:
    """Bench-only: on the GPU image (Python 3.12) hashing a from-list Dataset's state for its fingerprint failed;
    fall back to a random fingerprint (what datasets itself does when a transform cannot be hashed). Caching is
    off in the trainer anyway, so fingerprints only name in-memory tables."""
    try:
        import datasets.arrow_dataset as arrow_dataset
        import datasets.fingerprint as fingerprint
    except ImportError:
        return
    original = fingerprint.generate_fingerprint

    def generate_fingerprint(dataset):
        try:
            return original(dataset)
        except Exception:  # noqa: BLE001 - any hashing failure
            return fingerprint.generate_random_fingerprint()

    fingerprint.generate_fingerprint = generate_fingerprint
    arrow_dataset.generate_fingerprint = generate_fingerprint


def worker(args) -> None:
    assets = json.loads(args.assets)
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if args.worker == "build":
        result = build(Path(args.work), args.tiny)
    elif args.worker == "hf":
        result = worker_hf(args, assets)
    else:
        result = worker_ours(args, assets, args.worker)
    if torch.cuda.is_available():
        result["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 1)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------------- parent
def launch(args, role: str, assets: dict, work: Path, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", role, "--assets", json.dumps(assets), "--work", str(work),
           "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--tiny"] if args.tiny else []) + \
        (["--our-batch", str(args.our_batch)] if args.our_batch else [])
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    log = work / f"{role}.log"
    started = time.perf_counter()
    try:
        with log.open("w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    text = log.read_text(errors="replace")
    for line in reversed(text.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            break
    else:
        result = {"error": f"rc={rc}", "log_tail": text[-1500:]}
    result.update(run=role, rc=rc, total_s=round(time.perf_counter() - started, 1))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers, seq 128: checks the script on a CPU")
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 10; tiny 4)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps before the clock starts (default 3; tiny 2)")
    p.add_argument("--our-batch", type=int, default=None,
                   help="texts per step for our trainer (default 16: at most 16 x 2048 tokens, the HF run's bound)")
    p.add_argument("--out", type=Path, default=None, help="write results.json and table.md here")
    p.add_argument("--work", default=None, help="model/data directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--run-timeout", type=float, default=150, help="seconds allowed per run")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--assets", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or (4 if args.tiny else 10)
    args.warmup = args.warmup or (2 if args.tiny else 3)
    if args.worker:
        worker(args)
        return

    started = time.perf_counter()
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host_cpus": os.cpu_count(), "tiny": args.tiny,
            "steps": args.steps, "warmup": args.warmup, "peak_spec_tflops": PEAK_SPEC / 1e12,
            "peak_matmul_tflops": PEAK_MATMUL / 1e12}
    ver = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); import gpu_llama, json; "
                          "print(json.dumps(gpu_llama.versions()))" % str(Path(__file__).parent)],
                         capture_output=True, text=True)
    info["versions"] = json.loads(ver.stdout.strip().splitlines()[-1]) if ver.returncode == 0 else ver.stderr[-500:]
    print(json.dumps({"info": info}), flush=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-llama-"))
    work.mkdir(parents=True, exist_ok=True)
    built = launch(args, "build", {}, work, timeout=300)
    print(json.dumps(built), flush=True)
    if "model_dir" not in built:
        sys.exit(1)
    assets = {k: built[k] for k in ("model_dir", "data_dir")}
    results = []
    missing = [k for k, v in info["versions"].items() if isinstance(v, str) and v.startswith("MISSING")] \
        if isinstance(info["versions"], dict) else []
    for run in args.runs.split(","):
        needs = {"datasets", "pydantic", "peft", "prometheus_client"} if run != "hf" else {"accelerate"}
        lacking = sorted(needs & set(missing))
        if lacking:
            r = {"run": run, "error": f"skipped: missing {', '.join(lacking)}"}
        else:
            r = launch(args, run, assets, work, timeout=args.run_timeout)
        results.append(r)
        print(json.dumps(r), flush=True)
    hf = next((r for r in results if r["run"] == "hf" and "tokens_per_s" in r), None)
    lines = ["| run | batch | trainable | tokens/step | padding eff. | step s | tokens/s | x hf | TFLOP/s | MFU (989) "
             "| MFU (790) | MFU+attn | peak GiB |", "|" + "---|" * 13]
    for r in results:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['run']} | {r.get('error', 'failed')} |" + " |" * 11)
            continue
        ratio = f"{r['tokens_per_s'] / hf['tokens_per_s']:.2f}" if hf else ""
        lines.append(f"| {r['run']} | {r.get('batch', '')} | {r.get('trainable', 0) / 1e6:.1f}M | "
                     f"{r.get('tokens_per_step', '')} | {r.get('padding_efficiency', '')} | {r['step_s']} | "
                     f"{r['tokens_per_s']:.0f} | {ratio} | {r['tflops']} | {r['mfu'] * 100:.1f}% | "
                     f"{r['mfu_vs_matmul'] * 100:.1f}% | "
                     f"{(str(round(r['mfu_attn'] * 100, 1)) + '%') if 'mfu_attn' in r else ''} | "
                     f"{r.get('peak_gpu_gib', '')} |")
    table_md = "\n".join(lines)
    total = round(time.perf_counter() - started, 1)
    print(f"\nmodel: {built.get('parameters', 0) / 1e9:.2f}B parameters, data: {built.get('records')} texts, mean "
          f"{built.get('mean_tokens', 0):.0f} tokens; total {total}s\n{table_md}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"info": info, "build": built, "runs": results,
                                                           "total_s": total}, indent=1))
        (args.out / "table.md").write_text(table_md + "\n")
        for r in results:  # the logs of failed runs, for the lead
            log = work / f"{r['run']}.log"
            if "tokens_per_s" not in r and log.exists():
                shutil.copy(log, args.out / f"{r['run']}.log")
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
