"""cpu_dropout: torch's dropout distribution at a fraction of its cost, and attention that still masks padding."""

import pytest
import torch
from torch import nn

from finetune_trainer import cpu_dropout
from tiny_models import tiny_config


def test_keep_mask_keeps_one_minus_p_and_scales_to_an_exact_expectation():
    torch.manual_seed(0)
    keep, scale = cpu_dropout.keep_mask(torch.Size([1000, 1001]), 0.1)  # not a multiple of 4 elements
    assert keep.shape == (1000, 1001) and keep.dtype == torch.bool
    kept = keep.float().mean().item()
    assert kept == pytest.approx(0.9, abs=0.002)
    threshold = round(0.1 * 32768)
    assert scale == 32768 / (32768 - threshold)
    # Four lanes per 64-bit draw: no lane is biased (the top lane has one bit fewer, and only 15 bits are used).
    for lane in range(4):
        assert keep.flatten()[lane::4].float().mean().item() == pytest.approx(0.9, abs=0.004)


def test_drop_has_the_expectation_of_its_input_and_gradients_through_the_same_mask():
    torch.manual_seed(1)
    x = torch.full((200, 500), 2.0, requires_grad=True)
    y = cpu_dropout.drop(x, 0.25)
    assert y.mean().item() == pytest.approx(2.0, rel=0.01)
    values = torch.unique(y)
    assert values[0] == 0 and len(values) == 2 and values[1].item() == pytest.approx(2.0 * 32768 / (32768 - 8192))
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # the same elements, dropped forward and back


def test_drop_is_the_identity_when_not_training_or_p_is_zero_and_reproducible_by_seed():
    x = torch.randn(10, 10)
    assert cpu_dropout.drop(x, 0.5, training=False) is x
    assert cpu_dropout.drop(x, 0.0) is x
    assert torch.count_nonzero(cpu_dropout.drop(x, 1.0)) == 0
    assert cpu_dropout.keep_mask(torch.Size([8]), 0.99999)[1] == 32768  # no division by zero next to 1
    torch.manual_seed(3)
    a = cpu_dropout.drop(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, cpu_dropout.drop(x, 0.5))


def _model(arch: str, **overrides):
    import transformers

    torch.manual_seed(0)
    config = tiny_config(arch, num_labels=2, **overrides)
    return transformers.AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")


def _padded_batch():
    ids = torch.randint(5, 90, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return ids, mask


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_attention_while_training_computes_what_sdpa_does_with_the_padding_mask(arch):
    """In train mode with a drop rate that rounds to 0 (so nothing is dropped), the attention this module computes
    must equal sdpa's, padding mask (and causal mask) included. A name transformers does not know as a mask
    function would get no padding mask at all, and would differ here."""
    tiny = 1e-9
    overrides = {"bert": {"attention_probs_dropout_prob": tiny, "hidden_dropout_prob": 0.0},
                 "gpt2": {"attn_pdrop": tiny, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "summary_first_dropout": 0.0},
                 "llama": {"attention_dropout": tiny}}[arch]
    native = _model(arch, **overrides).train()
    ours = _model(arch, **overrides).train()
    cpu_dropout.install(ours)
    assert ours.config._attn_implementation == cpu_dropout.ATTENTION
    ids, mask = _padded_batch()
    expected = native(input_ids=ids, attention_mask=mask).logits
    got = ours(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_install_replaces_every_dropout_module_and_leaves_evaluation_unchanged():
    native, ours = _model("bert").eval(), _model("bert")
    dropouts = sum(type(m) is nn.Dropout for m in ours.modules())
    assert cpu_dropout.install(ours) == dropouts > 0
    assert not any(type(m) is nn.Dropout for m in ours.modules())
    ids, mask = _padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(input_ids=ids, attention_mask=mask).logits,
                                   native(input_ids=ids, attention_mask=mask).logits)


def test_install_reaches_the_dropout_of_lora_adapters_and_the_model_under_peft():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model("bert"), LoraConfig(r=4, lora_dropout=0.1, target_modules=["query", "value"]))
    cpu_dropout.install(model)
    lora_dropouts = [m for name, m in model.named_modules() if "lora_dropout." in name]
    assert lora_dropouts and all(isinstance(m, cpu_dropout.CpuDropout) for m in lora_dropouts)
    assert model.base_model.model.config._attn_implementation == cpu_dropout.ATTENTION
    ids, mask = _padded_batch()
    model.train()(input_ids=ids, attention_mask=mask).logits.sum().backward()


def test_training_with_dropout_drops_attention_probabilities():
    """With attention dropout only, two train-mode passes differ (the masks are drawn), evaluation does not."""
    model = _model("bert", attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0)
    cpu_dropout.install(model)
    ids, mask = _padded_batch()
    model.train()
    assert not torch.allclose(model(input_ids=ids, attention_mask=mask).logits,
                              model(input_ids=ids, attention_mask=mask).logits)
