"""Packed rows read their document boundaries from position ids, with every attention kernel that can."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/inductor-ftlab")


@pytest.mark.parametrize(
    "kernel", ["sdpa", pytest.param("flex_attention", marks=pytest.mark.slow)]
)  # flex attention compiles its kernel on first use (minutes on a CPU)
def test_packed_logits_equal_unpacked(kernel: str) -> None:
    """flex attention builds a block mask per document from position ids (no dense [T, T] mask); sdpa gets a
    block-diagonal mask. Either way the second example's logits are those it gets alone."""
    config = AutoConfig.for_model(
        model_type="llama",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=kernel).eval()
    a, b = [1, 5, 6, 7], [1, 8, 9]
    with torch.no_grad():
        positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
        packed = model(input_ids=torch.tensor([a + b]), position_ids=positions, use_cache=False).logits
        alone = model(input_ids=torch.tensor([b]), use_cache=False).logits
        first = model(input_ids=torch.tensor([a]), use_cache=False).logits
    assert model.config._attn_implementation == kernel
    torch.testing.assert_close(packed[0, 4:], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[0, :4], first[0], rtol=1e-5, atol=1e-5)
