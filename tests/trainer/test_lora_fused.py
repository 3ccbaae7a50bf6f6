"""The fused LoRA linear gives peft's outputs and gradients (to bf16 rounding under autocast), takes peft's own
path wherever it does not apply, and is what a CPU lora run trains with."""

from __future__ import annotations

import pytest
import torch
from finetune_trainer import lora_fused
from peft import LoraConfig, get_peft_model
from torch import nn

from tests.trainer.test_strategies import train_in_process


def adapted(base_trains: bool = False, **lora) -> nn.Module:
    torch.manual_seed(0)
    model = get_peft_model(nn.Sequential(nn.Linear(16, 24)), LoraConfig(r=4, lora_alpha=8, target_modules=["0"],
                                                                         **lora))
    layer = model.base_model.model[0]
    nn.init.normal_(layer.lora_B["default"].weight)  # peft starts B at zero, which would hide B's terms
    layer.base_layer.weight.requires_grad_(base_trains)
    return model


def forward_backward(model: nn.Module, precision: str) -> tuple[str, list[torch.Tensor]]:
    torch.manual_seed(1)
    x = torch.randn(3, 5, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        y = model(x)
    y.float().pow(2).sum().backward()
    trained = [p.grad for p in model.parameters() if p.requires_grad]
    return type(y.grad_fn).__name__, [y.detach().float(), x.grad, *trained]


@pytest.mark.parametrize("base_trains", [False, True])
@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-5), ("bf16", 2e-2)])
def test_outputs_and_gradients_match_peft(precision, tolerance, base_trains):
    node, expected = forward_backward(adapted(base_trains), precision)
    assert node != "_LoraLinearBackward"
    model = adapted(base_trains)
    assert lora_fused.fuse(model) == 1
    node, got = forward_backward(model, precision)
    assert node == "_LoraLinearBackward"
    assert len(got) == len(expected) == (5 if base_trains else 4)
    for want, have in zip(expected, got):
        assert have.dtype == want.dtype
        assert torch.allclose(have, want, rtol=tolerance, atol=tolerance * want.abs().max())


@pytest.mark.parametrize("case", ["merged", "disabled", "dropout", "dora"])
def test_other_cases_take_peft_s_own_path(case):
    model = adapted(lora_dropout=0.1 if case == "dropout" else 0.0, use_dora=case == "dora")
    lora_fused.fuse(model)
    if case == "merged":
        model.merge_adapter()
    if case == "disabled":
        model.disable_adapter_layers()
    node, _ = forward_backward(model, "fp32")
    assert node != "_LoraLinearBackward"


def test_a_cpu_lora_run_trains_through_the_fused_layers(tiny_model_dir, job):
    recipe, changed = train_in_process(job(tiny_model_dir("bert"), {"type": "lora"}, maxSteps=2))
    layers = [m for m in recipe.model.modules() if "forward" in vars(m)]
    assert layers and all(type(m).__name__ == "Linear" and hasattr(m, "lora_A") for m in layers)
    assert any(".lora_A." in name for name in changed) and any(".lora_B." in name for name in changed)
