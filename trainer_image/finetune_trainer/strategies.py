"""The four fine-tuning strategies as one function from (model, layout, spec) to what trains.

Frozen means ``requires_grad=False``: autograd records nothing for a frozen tensor, it gets no gradient, and the
optimizer (built from the trainable parameters only) keeps no state for it. When everything below a block is
frozen, autograd starts at that block, so backward stops there on its own.

- full: every parameter the forward uses.
- partial: the selected blocks (only ``parts`` of them, when set), the glue after them, the head, optionally the
  embeddings.
- hybrid: the same full-trained set, plus PEFT LoRA adapters on the projections of the *other* blocks; staged
  unfreezing moves more blocks to full training at given epochs.
- lora: LoRA adapters on the projections of the selected blocks (default all); the head trains as a PEFT
  ``modules_to_save`` copy so the saved adapter carries it; embeddings, when asked, train in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from finetune_trainer.config import LoraSpec, StrategySpec, StrategyType
from finetune_trainer.errors import ConfigError
from finetune_trainer.layers import Layout, linear_modules, select_blocks


@dataclass
class Strategy:
    """The model to train and the resolved choice of what trains in it."""

    kind: StrategyType
    model: nn.Module  # what trains: a peft.PeftModel for lora and hybrid, else the base model itself
    base: nn.Module  # the transformers model; the layout's names are relative to it
    layout: Layout
    parts: list[str] | None
    full_blocks: list[int]  # blocks whose own weights train
    adapted_blocks: list[int]  # blocks carrying LoRA adapters
    lora_modules: list[str]  # module paths (in the unwrapped model) that carry adapters
    stages: list[tuple[int, list[int]]] = field(default_factory=list)  # (epoch, blocks that join full training)

    @property
    def uses_adapters(self) -> bool:
        return bool(self.lora_modules)

    @property
    def adapter_is_complete(self) -> bool:
        """True when the PEFT adapter alone carries every trained weight (lora without embeddings); otherwise
        base weights trained in place and the output must be the merged model."""
        trained_base = any(p.requires_grad for p in self.layout.params.values())
        return self.uses_adapters and not trained_base

    def check_shardable(self, merge_adapter: bool) -> None:
        """FSDP shards the adapters too, and sharded adapters cannot be merged into base weights or staged; 4-bit
        base weights (QLoRA) are not sharded here."""
        if getattr(self.base, "is_loaded_in_4bit", False):
            raise ConfigError("strategy.lora.quantization: this model needs FSDP (sharded across GPUs), which does "
                              "not shard 4-bit weights here; use GPUs with more memory, or remove the quantization",
                              field="strategy.lora.quantization")
        if self.uses_adapters and (not self.adapter_is_complete or merge_adapter or self.stages):
            raise ConfigError(
                "this model needs FSDP (sharded across GPUs), where adapters cannot be merged or staged: use "
                "strategy.type lora (without embeddings, output.mergeAdapter or unfreeze) or partial",
                field="strategy.type")

    def trainable_names(self) -> list[str]:
        return sorted(n for n, p in self.model.named_parameters() if p.requires_grad)

    def trainable_set(self) -> dict:
        """What trains: logged at start, saved in every checkpoint, reported by `finetune plan`."""
        params = dict(self.model.named_parameters())
        trainable = self.trainable_names()
        return {
            "strategy": StrategyType(self.kind).value,
            "blocks": self.layout.describe_blocks(),
            "fullBlocks": self.full_blocks,
            "adaptedBlocks": self.adapted_blocks,
            "trainableParameters": sum(params[n].numel() for n in trainable),
            "totalParameters": sum(p.numel() for p in params.values()),
            "trainable": {n: params[n].numel() for n in trainable},
        }

    def describe(self) -> str:
        """For the log: 'lora on BertLayer: 1234 of 56789 parameters train (blocks: 6 (BertLayer); full [],
        LoRA [0, 1, ...])'."""
        trains = self.trainable_set()
        return (f"{trains['strategy']} on {self.layout.stacks[0].block_class}: {trains['trainableParameters']} of "
                f"{trains['totalParameters']} parameters train (blocks: {trains['blocks']}; full {self.full_blocks}, "
                f"LoRA {self.adapted_blocks})")

    def describe_trainable(self) -> str:
        """The trainable names in one line, block indices folded: 'bert.encoder.layer.{4,5}.output.dense.weight'."""
        stacks = sorted((s.name for s in self.layout.stacks), key=len, reverse=True)
        folded: dict[str, list[str]] = {}
        for name in self.trainable_names():
            for stack in stacks:
                marker = f"{stack}."
                at = name.find(marker)
                if at >= 0:
                    index, _, rest = name[at + len(marker):].partition(".")
                    folded.setdefault(f"{name[:at]}{marker}{{}}.{rest}", []).append(index)
                    break
            else:
                folded[name] = []
        return ", ".join(pattern.format("{" + ",".join(sorted(ix, key=int)) + "}") if ix else pattern
                         for pattern, ix in folded.items())

    def apply_stage(self, epoch: int) -> bool:
        """Unfreeze the blocks whose stage has started by ``epoch``; True when the trainable set grew."""
        due = sorted({b for start, blocks in self.stages if start <= epoch for b in blocks} - set(self.full_blocks))
        if not due:
            return False
        _set_trainable(self.layout, self.layout.names_in_blocks(due, self.parts), True)
        self.full_blocks = sorted(set(self.full_blocks) | set(due))
        return True

    def frozen_prefix(self) -> list[nn.Module]:
        """Modules below everything that trains: the blocks under the lowest trainable one and, then frozen too,
        the embedding modules. They are a fixed feature extractor, so the loop runs them in eval mode (no dropout,
        which on CPUs costs as much as a matmul)."""
        lowest = self.lowest_trainable_block()
        if lowest == 0:
            return []
        blocks = self.layout.blocks if lowest is None else self.layout.blocks[:lowest]
        modules = dict(self.base.named_modules())
        holders = {name for name, m in modules.items() if any(m is b.module for b in self.layout.blocks)}
        prefix = [b.module for b in blocks]
        for param in self.layout.embeddings:
            path = param.rsplit(".", 1)[0]
            # Climb to the largest enclosing module that holds no block (BertEmbeddings, with its dropout).
            while "." in path and not any(h.startswith(path.rsplit(".", 1)[0] + ".") for h in holders):
                path = path.rsplit(".", 1)[0]
            prefix.append(modules[path])
        return list({id(m): m for m in prefix}.values())

    def lowest_trainable_block(self) -> int | None:
        """Index of the first block with anything trainable in or below it; None when only the head trains."""
        trainable = {id(p) for p in self.model.parameters() if p.requires_grad}
        if any(id(self.layout.params[n]) in trainable for n in self.layout.embeddings):
            return 0
        for block in self.layout.blocks:
            if any(id(p) in trainable for p in block.module.parameters()):
                return block.index
        return None


def build_strategy(model: nn.Module, layout: Layout, spec: StrategySpec) -> Strategy:
    """Freeze, wrap and unfreeze ``model`` as ``spec`` says; the result's trainable set is exactly what changes."""
    kind = StrategyType(spec.type)
    parts = [str(getattr(p, "value", p)) for p in spec.parts] if spec.parts else None
    used = set(layout.params) - set(layout.unused)
    if kind == StrategyType.FULL:
        _set_trainable(layout, sorted(used), True)
        _set_trainable(layout, layout.unused, False)
        return Strategy(kind, model, model, layout, None, [b.index for b in layout.blocks], [], [])

    selected = select_blocks(spec.layers, layout)
    everything = [b.index for b in layout.blocks]
    full = selected if kind in (StrategyType.PARTIAL, StrategyType.HYBRID) else []
    adapted = {StrategyType.HYBRID: sorted(set(everything) - set(selected)),
               StrategyType.LORA: selected}.get(kind, [])
    stages = [(stage.epoch, select_blocks(stage.layers, layout, f"strategy.unfreeze[{i}].layers"))
              for i, stage in enumerate(spec.unfreeze or [])]

    base = model
    _set_trainable(layout, list(layout.params), False)
    lora_modules = _lora_targets(layout, adapted, spec, parts)
    head = layout.head if spec.head else []
    embeddings = layout.embeddings if spec.embeddings else []
    if kind == StrategyType.LORA:
        # The head trains as a PEFT modules_to_save copy so the saved adapter carries it; embeddings train in
        # place, because a copy would break their ties (shared encoder/decoder/LM-head weights).
        model = _wrap_lora(model, lora_modules, spec, save_modules=_owners(model, head))
        in_place = embeddings
    else:
        if lora_modules:
            model = _wrap_lora(model, lora_modules, spec, save_modules=[])
        in_place = layout.names_in_blocks(full, parts) + head + embeddings
    _set_trainable(layout, in_place, True)
    return Strategy(kind, model, base, layout, parts, full, adapted, lora_modules, stages)


def _set_trainable(layout: Layout, names: list[str], flag: bool) -> None:
    for name in names:
        layout.params[name].requires_grad_(flag)


def _lora_targets(layout: Layout, blocks: list[int], spec: StrategySpec, parts: list[str] | None) -> list[str]:
    """Full module paths of the projections to adapt in ``blocks``: all of them (``["auto"]``, narrowed by
    ``parts``) or the ones whose path ends with one of the names in strategy.lora.targets."""
    if not blocks:
        return []
    wanted = (spec.lora or LoraSpec()).targets
    def projections(narrow_to: list[str] | None) -> list[str]:
        return [f"{layout.blocks[i].name}.{rel}" for i in blocks
                for rel in linear_modules(layout.blocks[i].module, narrow_to)]

    if wanted == ["auto"]:
        return projections(parts)
    candidates = projections(None)
    chosen = [c for c in candidates if any(c == t or c.endswith("." + t) for t in wanted)]
    if not chosen:
        available = sorted({c.rsplit(".", 1)[-1] for c in candidates})
        raise ConfigError(f"strategy.lora.targets {wanted} match no projection in the selected blocks; this model "
                          f"has {available} (or use [auto])", field="strategy.lora.targets")
    return chosen


def _owners(model: nn.Module, names: list[str]) -> list[str]:
    """Paths of the modules that directly hold the named parameters (what PEFT's modules_to_save expects)."""
    wanted = set(names)
    owners = []
    for module_name, module in model.named_modules():
        if any(f"{module_name}.{p}" in wanted for p, _ in module.named_parameters(recurse=False)):
            owners.append(module_name)
    return owners


def leave_adapter_casts_to_autocast(model: nn.Module) -> None:
    """Under autocast: stop peft from casting each adapter's input to the adapter weights' fp32 first. Autocast
    casts it back to bf16 for the matmul, so every adapted module paid two full-size copies; in a bf16 LoRA step on
    CPU copies were 29 % of the time, and leaving the cast to autocast made the step 1.09x faster (BENCHMARKS.md §2).
    Without autocast the cast is what makes an fp32 adapter take a bf16 input (QLoRA), so it stays."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in model.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.cast_input_dtype_enabled = False


def _wrap_lora(model: nn.Module, targets: list[str], spec: StrategySpec, save_modules: list[str]) -> nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    lora = spec.lora or LoraSpec()
    modules = dict(model.named_modules())
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
        modules_to_save=save_modules or None, bias="none",
        # GPT-2 style Conv1D stores its weight transposed.
        fan_in_fan_out=any(isinstance(modules[t], Conv1D) for t in targets),
    )
    return get_peft_model(model, config)
