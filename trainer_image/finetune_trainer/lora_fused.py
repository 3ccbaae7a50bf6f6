"""LoRA linear layers as one autograd function on CPU: the frozen projection and its adapter in two matmuls that
write one output, and a backward that reuses what the forward saved.

Why: peft computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` as five autograd nodes. Under bf16
autocast that casts ``x`` twice (once for the base, once for ``lora_A``), writes three full-size outputs (the
base's, the scaled adapter's and their sum) and runs each node's bookkeeping. In a bf16 ``lora`` step on CPU,
where AMX makes the matmuls themselves cheap, that overhead is what kept LoRA no faster than ``full``
(BENCHMARKS.md §1). Here ``x`` is cast once and saved once, the adapter's product is added into the base's output
in place (``addmm_``), and backward forms the gradient of ``x`` with one more in-place ``addmm_``.

``fuse`` applies it to every peft ``lora.Linear`` whose base is an ``nn.Linear``. Each call checks that the
layer is in the plain case: adapters enabled and not merged, one active adapter of vanilla LoRA (no DoRA or
other variant, no adapter bias), no LoRA dropout (the default), no per-row adapter names. Anything else runs
peft's own forward, and merging, saving and loading adapters are untouched. The numbers match peft's to bf16
rounding (tests/trainer/test_lora_fused.py).
"""

from __future__ import annotations

import logging
import types

import torch
from torch import nn

log = logging.getLogger(__name__)


class _LoraLinear(torch.autograd.Function):
    """y = x·Wᵀ + b + scale·(x·Aᵀ)·Bᵀ in the autocast dtype (or x's dtype without autocast)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float):
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        with torch.autocast(device, enabled=False):
            rows = x.reshape(-1, x.shape[-1]).to(dtype)
            w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
            down = rows @ a.t()
            out = rows @ w.t() if bias is None else torch.addmm(bias.to(dtype), rows, w.t())
            out.addmm_(down, b.t(), alpha=scale)
        # The frozen weight is saved as itself and cast again in backward: a saved bf16 copy would hold every
        # adapted weight twice until backward (170 MiB for a BERT-base), for a cast that costs little.
        ctx.save_for_backward(rows, down, weight, a, b)
        ctx.scale, ctx.input_shape, ctx.input_dtype = scale, x.shape, x.dtype
        ctx.param_dtypes = (weight.dtype, None if bias is None else bias.dtype, lora_a.dtype, lora_b.dtype)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        rows, down, weight, a, b = ctx.saved_tensors
        need_x, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        grad = grad.reshape(-1, grad.shape[-1]).to(rows.dtype)
        grad_down = grad @ b  # the gradient at the adapter's rank-r bottleneck
        weight_dtype, bias_dtype, a_dtype, b_dtype = ctx.param_dtypes
        grad_x = grad_w = grad_bias = grad_a = grad_b = None
        if need_x:
            grad_x = (grad @ weight.to(rows.dtype)).addmm_(grad_down, a, alpha=ctx.scale)
            grad_x = grad_x.view(ctx.input_shape).to(ctx.input_dtype)
        if need_w:  # a base that trains too (not the case in lora or hybrid, whose adapted bases are frozen)
            grad_w = (grad.t() @ rows).to(weight_dtype)
        if need_bias:
            grad_bias = grad.sum(0).to(bias_dtype)
        if need_a:
            grad_a = (grad_down.t() @ rows).mul_(ctx.scale).to(a_dtype)
        if need_b:
            grad_b = (grad.t() @ down).mul_(ctx.scale).to(b_dtype)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None


def _plain_adapter(layer) -> str | None:
    """The one active adapter's name where the fused function computes what peft would; None otherwise."""
    active = layer.active_adapters
    if layer.disable_adapters or layer.merged or len(active) != 1 or active[0] not in layer.lora_A:
        return None
    name = active[0]
    plain = (name not in layer.lora_variant and isinstance(layer.lora_dropout[name], nn.Identity)
             and layer.lora_B[name].bias is None)
    return name if plain else None


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft lora.Linear.forward, taking the fused path in the plain case."""
    name = None if args or kwargs else _plain_adapter(self)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer
    return _LoraLinear.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                             self.scaling[name])


def fuse(model: nn.Module) -> int:
    """Route the model's peft LoRA linear layers with an ``nn.Linear`` base through ``_LoraLinear``; returns how
    many. For a model that trains on CPU (where it was measured)."""
    from peft.tuners.lora import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and type(module.base_layer) is nn.Linear:
            module.forward = types.MethodType(_forward, module)
            fused += 1
    if fused:
        log.info("LoRA: %d adapted linear layers fused with their base", fused)
    return fused
