"""Where a model's transformer blocks are, found from its structure, and which of them a spec selects.

No name patterns: the blocks are the ``nn.ModuleList``s whose children are the classes a model declares
unsplittable (``_no_split_modules``), or, for models that declare none, the outermost lists of same-class
composite modules. Everything outside the blocks is sorted by *when the forward pass first uses it*, observed
once on a 4-token input: used before the first block → embeddings side (token/position embeddings and the norm
right after them), after the last block → head (final norm, pooler, classifier, an untied LM head), in between
(seq2seq: the encoder's final norm) → glue that trains with the block before it. Parameters the forward never
uses are reported and never train, so a strategy's trainable set is exactly the set of tensors that change.

Blocks are numbered in forward order across stacks: a seq2seq model's encoder blocks come first, then its decoder
blocks, so ``last:2`` means the two blocks nearest the output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from finetune_trainer.config import BlockPart
from finetune_trainer.errors import LayerSelectionError

# What a block is made of; strategy.parts chooses among them.
PARTS = tuple(part.value for part in BlockPart)


@dataclass(frozen=True)
class Stack:
    name: str  # module path of the ModuleList, e.g. "model.encoder.layers"
    block_class: str
    size: int


@dataclass(frozen=True)
class Block:
    index: int  # position in forward order across all stacks
    name: str  # module path, e.g. "bert.encoder.layer.3"
    stack: str
    module: nn.Module = field(compare=False, repr=False)


@dataclass
class Layout:
    """The resolved structure of one model; parameter names are those of the unwrapped model."""

    stacks: list[Stack]
    blocks: list[Block]
    params: dict[str, nn.Parameter]  # every parameter, tied ones once
    block_params: list[dict[str, str]]  # per block: parameter name -> part (attention, mlp or norm)
    embeddings: list[str]
    head: list[str]
    glue: dict[int, list[str]]  # block index -> non-block parameters used after it and before the next block
    unused: list[str]
    traced: bool  # False when the tracing forward failed and non-block parameters were sorted by type only

    def describe_blocks(self) -> str:
        """'6 (BertLayer)' or '12 (6 T5Block in encoder.block + 6 T5Block in decoder.block)'."""
        if len(self.stacks) == 1:
            return f"{len(self.blocks)} ({self.stacks[0].block_class})"
        inner = " + ".join(f"{s.size} {s.block_class} in {s.name}" for s in self.stacks)
        return f"{len(self.blocks)} ({inner})"

    def names_in_blocks(self, indices: list[int], parts: list[str] | None = None) -> list[str]:
        """Parameters of the given blocks (only the given parts, when set), plus the glue that follows them."""
        names = []
        for i in indices:
            names += [n for n, part in self.block_params[i].items() if parts is None or part in parts]
            names += self.glue.get(i, [])
        return names


def resolve_layout(model: nn.Module) -> Layout:
    """Find the block stacks of ``model`` and sort every parameter into blocks, embeddings, glue, head, unused."""
    lists = _block_lists(model)
    if not lists:
        raise LayerSelectionError(
            f"found no stack of repeated transformer blocks in {type(model).__name__}; strategy.layers needs one "
            "(use strategy.type full)", field="strategy.layers")
    params = dict(model.named_parameters())
    owner = _parameter_owners(model)
    first_use, stack_order = _trace_first_use(model, lists)
    traced = first_use is not None
    if traced:
        lists = [lists[i] for i in stack_order]

    stacks, blocks = [], []
    for name, mlist in lists:
        stacks.append(Stack(name, type(mlist[0]).__name__, len(mlist)))
        for i, module in enumerate(mlist):
            blocks.append(Block(len(blocks), f"{name}.{i}", name, module))

    name_of = {id(p): n for n, p in params.items()}
    in_block: dict[int, int] = {}
    block_params: list[dict[str, str]] = []
    for block in blocks:
        parts = _block_parts(block.module)
        entry = {}
        for local_name, p in block.module.named_parameters():
            if id(p) not in in_block:
                in_block[id(p)] = block.index
                entry[name_of[id(p)]] = parts[local_name]
        block_params.append(entry)

    unused = [name for name, p in params.items() if traced and id(p) not in first_use]
    for entry in block_params:
        for name in unused:
            entry.pop(name, None)
    embeddings, head, glue = [], [], {}
    n = len(blocks)
    for name, p in params.items():
        if id(p) in in_block or name in unused:
            continue
        module = owner[name]
        blocks_before = first_use[id(p)] if traced else n
        if isinstance(module, nn.Embedding) or blocks_before == 0:
            embeddings.append(name)
        elif blocks_before >= n:
            head.append(name)
        else:
            glue.setdefault(blocks_before - 1, []).append(name)
    return Layout(stacks, blocks, params, block_params, embeddings, head, glue, unused, traced)


def select_blocks(selector: str | None, layout: Layout, field_name: str = "strategy.layers") -> list[int]:
    """Parse a selector (all, none, last:N, first:N, every:K, "0-3,10") against the model's blocks.

    ``every:K`` counts from the top so the block nearest the head is always in: K=2 on 6 blocks gives 1, 3, 5.
    """
    n = len(layout.blocks)
    has = f"the model has {layout.describe_blocks()}"
    spec = (selector or "all").strip()
    if spec == "all":
        return list(range(n))
    if spec == "none":
        return []
    match = re.fullmatch(r"(last|first|every):(\d+)", spec)
    if match:
        kind, k = match.group(1), int(match.group(2))
        if k < 1:
            raise LayerSelectionError(f'{field_name} "{spec}": the count must be at least 1; {has}', field=field_name)
        if kind == "every":
            return sorted(range(n - 1, -1, -k))
        if k > n:
            raise LayerSelectionError(
                f'{field_name} "{spec}" selects {k} blocks but {has}; use {kind}:N with N <= {n}', field=field_name)
        return list(range(n - k, n)) if kind == "last" else list(range(k))
    chosen: set[int] = set()
    for item in spec.split(","):
        bounds = item.strip().split("-")
        if not all(b.isdigit() for b in bounds) or len(bounds) > 2:
            raise LayerSelectionError(
                f'{field_name} "{spec}" is not a block selection; use all, none, last:N, first:N, every:K or '
                'indices and ranges like "0-3,10"', field=field_name)
        lo, hi = int(bounds[0]), int(bounds[-1])
        if lo > hi:
            raise LayerSelectionError(f'{field_name} "{spec}": range {item} runs backwards', field=field_name)
        if hi >= n:
            raise LayerSelectionError(
                f'{field_name} "{spec}" selects block {hi} but {has}; block indices go from 0 to {n - 1}',
                field=field_name)
        chosen.update(range(lo, hi + 1))
    return sorted(chosen)


def linear_modules(block: nn.Module, parts: list[str] | None = None) -> list[str]:
    """Names (relative to the block) of the projections LoRA can adapt: Linear and GPT-2 style Conv1D."""
    from transformers.pytorch_utils import Conv1D

    kinds = _module_parts(block)
    return [name for name, m in block.named_modules()
            if isinstance(m, (nn.Linear, Conv1D)) and (parts is None or kinds[name] in parts)]


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """ModuleLists of blocks in registration order: lists of the declared unsplittable classes, or else every
    outermost list of same-class composite modules (one for encoders and decoders, two for seq2seq)."""
    declared = set(getattr(model, "_no_split_modules", None) or [])
    homogeneous = [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1
        and any(True for _ in m[0].children())  # blocks are composite; a list of bare Linear layers is not a stack
    ]
    found = [(n, m) for n, m in homogeneous if type(m[0]).__name__ in declared]
    if not found:
        found = homogeneous
    # Lists inside a block (T5's per-block sublayers, MoE experts) belong to that block, not to the stack.
    return [(n, m) for n, m in found if not any(n.startswith(other + ".") for other, _ in found if other != n)]


def _parameter_owners(model: nn.Module) -> dict[str, nn.Module]:
    owners = {}
    for module_name, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            owners.setdefault(f"{module_name}.{pname}" if module_name else pname, module)
    return owners


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)) or "norm" in type(module).__name__.lower()


def _is_attention(module: nn.Module) -> bool:
    kind = type(module).__name__.lower()
    return "attention" in kind or "attn" in kind


def _module_parts(block: nn.Module) -> dict[str, str]:
    """Each submodule of a block → attention, mlp or norm: norms by type, attention by the enclosing attention
    module's class, and whatever is neither (intermediate/output projections, fc1/fc2, gate/up/down) is the MLP."""
    kinds: dict[str, str] = {}
    for name, module in block.named_modules():
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if _is_norm(module):
            kinds[name] = "norm"
        elif _is_attention(module) or (name and kinds.get(parent) == "attention"):
            kinds[name] = "attention"
        else:
            kinds[name] = "mlp"
    return kinds


def _block_parts(block: nn.Module) -> dict[str, str]:
    kinds = _module_parts(block)
    parts = {}
    for module_name, module in block.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            parts[f"{module_name}.{pname}" if module_name else pname] = kinds[module_name]
    return parts


class _FirstUse(TorchFunctionMode):
    """Records, for each parameter, how many blocks had started when a torch function first received it."""

    def __init__(self, params: set[int]):
        super().__init__()
        self.params = params
        self.blocks_started = 0
        self.first_use: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in (*args, *kwargs.values()):
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, torch.Tensor) and id(t) in self.params:
                    self.first_use.setdefault(id(t), self.blocks_started)
        return func(*args, **kwargs)


def _trace_first_use(model: nn.Module, lists: list[tuple[str, nn.ModuleList]]):
    """Run the model once on a tiny input; return (first use per parameter id, stack indices in call order)."""
    recorder = _FirstUse({id(p) for p in model.parameters()})
    stack_calls: list[int] = []
    hooks = []
    for stack_index, (_, mlist) in enumerate(lists):
        for module in mlist:
            def started(_m, _a, stack_index=stack_index):
                recorder.blocks_started += 1
                if stack_index not in stack_calls:
                    stack_calls.append(stack_index)
            hooks.append(module.register_forward_pre_hook(started))
    was_training = model.training
    model.eval()
    try:
        ids = _sample_input_ids(model)
        attempts = [{"input_ids": ids}, {"input_ids": ids, "decoder_input_ids": ids}]
        for kwargs in attempts:
            recorder.first_use.clear()
            recorder.blocks_started = 0
            stack_calls.clear()
            try:
                with torch.no_grad(), recorder:
                    model(**kwargs)
                break
            except (TypeError, ValueError, RuntimeError, IndexError):
                continue
        else:
            return None, list(range(len(lists)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    order = stack_calls + [i for i in range(len(lists)) if i not in stack_calls]
    return recorder.first_use, order


def _sample_input_ids(model: nn.Module) -> torch.Tensor:
    """Four tokens: three ordinary ones and an end-of-sequence (BART/T5 classifiers pool at the EOS)."""
    cfg = model.config
    vocab = model.get_input_embeddings().num_embeddings

    def first(value):
        return value[0] if isinstance(value, (list, tuple)) else value

    special = {first(getattr(cfg, k, None)) for k in ("pad_token_id", "bos_token_id", "eos_token_id",
                                                       "decoder_start_token_id")}
    ordinary = next(i for i in range(3, vocab) if i not in special)
    eos = first(getattr(cfg, "eos_token_id", None))
    eos = ordinary if eos is None else eos
    device = next(model.parameters()).device
    return torch.tensor([[ordinary, ordinary, ordinary, eos]], device=device)
