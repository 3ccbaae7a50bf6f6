"""Dropout on CPU at a fraction of torch's cost, with the same distribution.

Why: on CPU, torch's dropout draws its mask with a Bernoulli transform per element. Profiled, that was 17 % of
a ``full`` BERT step at batch 32 (BENCHMARKS.md §2), as much as the attention matmuls. Turning dropout off
(``training.dropout: 0``) changes the model users asked for, so the trainer draws the masks itself:

- one 64-bit draw from torch's own generator decides four elements, with 15 uniform bits each. The drop rate is
  rounded to a multiple of 1/32768 (0.1 becomes 0.100006) and the kept values are scaled by the rounded keep
  rate, so every activation's expectation stays exact. A seed still reproduces a run (not the masks torch would
  have drawn), and checkpoints save and restore the same generator state.
- the mask is saved for backward as bool, a byte per element where torch saves a float.

``install`` applies it to a model that trains on CPU (CUDA's fused dropout is already fast):
- every ``nn.Dropout`` module (embeddings, hidden states, classifier heads, LoRA's input dropout) becomes
  ``CpuDropout``;
- attention-probability dropout happens inside the attention function, so models on transformers' ``sdpa``
  attention move to ``ATTENTION``, registered here: while training with dropout it computes attention itself
  with this mask; otherwise (evaluation, no dropout) it is ``sdpa`` unchanged. The same name is registered for
  masks with sdpa's mask function: for a name it does not know, transformers builds no padding mask at all.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

ATTENTION = "sdpa_cpu_dropout"
_RESOLUTION = 1 << 15  # uniform bits per decision: the low 15 of each 16-bit lane of a 63-bit draw
_LANES = 4  # 16-bit lanes per int64 draw
# Attention arguments the math below does not apply: T5's relative position bias (sdpa folds it into the mask),
# and what sdpa itself refuses with a clear error (logit soft-capping, attention sinks).
_SDPA_ONLY = ("position_bias", "softcap", "s_aux")


def keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A bool mask of ``shape``, True where an element is kept, and the scale that keeps expectations exact."""
    threshold = min(round(p * _RESOLUTION), _RESOLUTION - 1)  # a rate within 1/65536 of 1 keeps one in 32768
    count = shape.numel()
    draws = torch.empty((count + _LANES - 1) // _LANES, dtype=torch.int64).random_()
    lanes = draws.view(torch.int16)[:count].view(shape)
    keep = lanes.bitwise_and_(_RESOLUTION - 1) >= threshold
    return keep, _RESOLUTION / (_RESOLUTION - threshold)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep, scale = keep_mask(x.shape, p)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None


def drop(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``torch.nn.functional.dropout`` for CPU tensors; anything else goes to torch's."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or p >= 1:
        return nn.functional.dropout(x, p, training)
    return _Dropout.apply(x, p)


class CpuDropout(nn.Dropout):
    """``nn.Dropout`` with the mask drawn as above; a subclass, so code that looks for dropout modules finds it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop(x, self.p, self.training)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs):
    """transformers' sdpa attention, except while training with dropout on CPU: then softmax(QKᵀ·scale + mask),
    this module's dropout, times V (what sdpa's math kernel computes, with torch's slower mask)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if not (dropout and module.training and query.device.type == "cpu") or any(
            kwargs.get(name) is not None for name in _SDPA_ONLY):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(2, 3)).mul_(scaling if scaling is not None else query.size(-1) ** -0.5)
    q_length, kv_length = scores.shape[-2:]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and causal and q_length > 1:  # sdpa would have run with is_causal=True
        attention_mask = torch.ones(q_length, kv_length, dtype=torch.bool).tril_(kv_length - q_length)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        # The dtype's minimum, not -inf: a row with every key masked (padding) then averages instead of NaN.
        scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    # In fp32 under bf16 autocast, as transformers' eager attention does; the product with V is bf16 again.
    probs = drop(torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def install(model: nn.Module) -> int:
    """Put this dropout into ``model`` (which trains on CPU); returns how many dropout modules it replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, CpuDropout(child.p, child.inplace))
                replaced += 1
    from transformers import PreTrainedModel

    # The transformers model itself, also when a PeftModel wraps it.
    base = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if base is not None and base.config._attn_implementation == "sdpa" and base._can_set_attn_implementation():
        _register()
        base.set_attn_implementation(ATTENTION)
    log.info("CPU dropout: %d dropout modules replaced; attention %s", replaced,
             base.config._attn_implementation if base is not None else "not a transformers model")
    return replaced


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
