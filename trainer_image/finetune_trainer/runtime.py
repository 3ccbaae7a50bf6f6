"""Where and how the loop runs: device, distributed group, precision, CPU threads.

- Distributed: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; with WORLD_SIZE > 1 the process group is NCCL on
  GPUs and gloo on CPUs, and the model is wrapped in DDP, or sharded with FSDP2 (per block, per parameter, so
  frozen and trainable tensors can share a block) when its training state would not fit one GPU
  (``FINETUNE_FSDP=1`` forces it).
- Precision ``auto``: bf16 autocast on GPUs that support it and on CPUs with AMX bf16 tiles (Sapphire Rapids and
  later: a bf16 matmul there runs ~10x an fp32 one, a `full` step ~1.9x per CPU-second, BENCHMARKS.md §2), fp32
  elsewhere: with AVX-512 bf16 alone, bf16 was 0.69x fp32. Weights and optimizer state stay fp32 either way.
  TF32 matmuls on. ``fp16`` uses a gradient scaler and needs a GPU.
- Threads: ``OMP_NUM_THREADS`` if set, else the cgroup CPU quota (cgroup v2 ``cpu.max`` or v1
  ``cpu.cfs_quota_us``), else the CPUs this process may run on, shared among the local ranks; a pod limited to
  2 CPUs on a 64-core node must not start 64 threads.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from finetune_trainer.config import Precision, TrainingSpec
from finetune_trainer.errors import ConfigError

FSDP_ENV = "FINETUNE_FSDP"
FSDP_MEMORY_SHARE = 0.6  # use FSDP when weights + gradients + optimizer state exceed this share of one GPU


@dataclass
class Runtime:
    device: torch.device
    rank: int
    local_rank: int
    world_size: int
    precision: str  # fp32, bf16 or fp16
    threads: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (a signal that reached one pod stops all)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def sum_over_ranks(self, value: float) -> float:
        """``value`` summed over every rank (each rank gets the sum)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def setup(training: TrainingSpec) -> Runtime:
    """Join the process group (under torchrun), pick the device and precision, size the thread pool."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(minutes=30))
    explicit = os.environ.get("OMP_NUM_THREADS", "").isdigit()  # torchrun sets it per process already
    threads = thread_budget() if explicit else max(1, thread_budget() // max(1, local_world))
    torch.set_num_threads(threads)
    return Runtime(device, rank, local_rank, world_size, resolve_precision(training.precision, device), threads)


def resolve_precision(requested: Precision | str, device: torch.device) -> str:
    kind = Precision(requested)
    if kind == Precision.AUTO:
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_amx_bf16() else "fp32"
    if kind == Precision.FP16 and device.type != "cuda":
        raise ConfigError("training.precision fp16 needs a GPU; use auto, fp32 or bf16", field="training.precision")
    if kind == Precision.BF16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"training.precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use auto or "
                          "fp16", field="training.precision")
    return kind.value


def cpu_has_amx_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 on AMX tiles, which oneDNN (torch's CPU matmuls) uses. The kernel lists
    ``amx_bf16`` only where it also lets processes use the tiles' state; outside Linux we do not know: False."""
    try:
        with cpuinfo.open() as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return "amx_bf16" in flags.split() and torch.backends.mkldnn.is_available()


def thread_budget(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: ``OMP_NUM_THREADS`` when set, else the cgroup quota rounded up, capped by the
    CPUs it is allowed to run on."""
    explicit = os.environ.get("OMP_NUM_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota(cgroup_root)
    return max(1, min(available, math.ceil(quota))) if quota else available


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU limit in cores from cgroup v2 ``cpu.max`` ("200000 100000") or v1 cfs quota/period; None if none."""
    try:
        v2 = cgroup_root / "cpu.max"
        if v2.is_file():
            quota, _, period = v2.read_text().strip().partition(" ")
            return None if quota == "max" else int(quota) / int(period or 100000)
        v1 = cgroup_root / "cpu" / "cpu.cfs_quota_us"
        if v1.is_file():
            quota = int(v1.read_text().strip())
            period = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text().strip())
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None
    return None


def wants_fsdp(model: nn.Module, runtime: Runtime, optimizer_bytes_per_param: int = 8) -> bool:
    """FSDP when forced, or when fp32 weights + gradients + optimizer state of the trainable part exceed a share
    of one GPU's memory; DDP otherwise (it is simpler and faster when everything fits)."""
    if not runtime.distributed:
        return False
    if os.environ.get(FSDP_ENV) in ("1", "true"):
        return True
    if runtime.device.type != "cuda":
        return False
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    needed = weights + trainable * (4 + optimizer_bytes_per_param)
    return needed > FSDP_MEMORY_SHARE * torch.cuda.get_device_properties(runtime.device).total_memory


def wrap(model: nn.Module, runtime: Runtime, block_classes: set[type], fsdp: bool) -> nn.Module:
    """The module the loop calls: the model itself, DDP, or (FSDP2 ``fully_shard``) the model with each block
    and then the whole sharded in place. FSDP2 shards per parameter, so frozen and trainable tensors can share a
    block, and it runs on CPUs (gloo) as well as GPUs."""
    if not runtime.distributed:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if type(module) in block_classes:
                fully_shard(module)
        fully_shard(model)
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[runtime.local_rank] if runtime.device.type == "cuda" else None)


def is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def reshard(module: nn.Module) -> None:
    """After a forward without backward (evaluation) FSDP leaves the root's parameters gathered; shard them
    again so parameters and optimizer state line up."""
    if is_fsdp(module):
        for m in module.modules():
            if is_fsdp(m):
                m.reshard()


@contextlib.contextmanager
def no_sync(module: nn.Module, skip: bool):
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on accumulation micro-batches before the
    last one."""
    if skip and is_fsdp(module):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    elif skip and hasattr(module, "no_sync"):
        with module.no_sync():
            yield
    else:
        yield


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded (FSDP) model, unsharded on the main rank's CPU; every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def trainable_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters of an unsharded model (a sharded one is checkpointed shard by shard, sharded.py)."""
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Restore the full state of an unsharded checkpoint's ``optimizer.pt`` (every rank reads all of it; a sharded
    model takes it whole too, so a checkpoint written before the model needed FSDP still resumes)."""
    if not is_fsdp(module):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
