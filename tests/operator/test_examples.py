"""Every example manifest is a valid FineTuneJob."""

from pathlib import Path

import pytest

from finetune_operator.manifest import load_finetunejob

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_is_an_example_per_strategy():
    strategies = {load_finetunejob(p).spec.strategy.type for p in EXAMPLES}
    assert strategies >= {"full", "partial", "hybrid", "lora"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path):
    assert load_finetunejob(path).metadata.name
