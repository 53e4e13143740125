"""Trainable-parameter counts equal their closed forms on full-size shapes (built on the meta device)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from ftlab.methods import LoRA, LoReFT, PrefixTuning, PromptTuning

BERT_BASE = {
    "model_type": "bert",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "vocab_size": 30522,
}
# Llama-shaped: 16 layers, hidden 2048, 32 heads of 64, 4 key/value heads (kv_dim 256), intermediate 5632
LLAMA = {
    "model_type": "llama",
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "intermediate_size": 5632,
    "vocab_size": 32000,
}


def build(config: dict, auto: type) -> torch.nn.Module:
    cfg = dict(config)
    with torch.device("meta"):
        return auto.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))


def trainable(method, model) -> int:
    with torch.device("meta"):
        model = method.apply(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("r", [4, 8])
def test_lora_is_r_times_din_plus_dout_per_target(r: int) -> None:
    # BERT-base, all linear layers: per block q, k, v, attention-out (768→768) ×4, intermediate 768→3072,
    # output 3072→768; plus the pooler 768→768.
    per_block = 4 * (768 + 768) + (768 + 3072) + (3072 + 768)
    assert trainable(LoRA(r=r), build(BERT_BASE, AutoModel)) == r * (12 * per_block + 768 + 768)
    # Llama: q 2048→2048, k and v 2048→256, o 2048→2048, gate and up 2048→5632, down 5632→2048
    per_block = 2 * (2048 + 2048) + 2 * (2048 + 256) + 3 * (2048 + 5632)
    assert trainable(LoRA(r=r), build(LLAMA, AutoModelForCausalLM)) == r * 16 * per_block
    assert trainable(LoRA(r=r, target_modules=["q_proj", "v_proj"]), build(LLAMA, AutoModelForCausalLM)) == (
        r * 16 * ((2048 + 2048) + (2048 + 256))
    )


def test_prompt_tuning_is_tokens_times_d_model() -> None:
    assert trainable(PromptTuning(num_virtual_tokens=20), build(LLAMA, AutoModelForCausalLM)) == 20 * 2048
    assert trainable(PromptTuning(num_virtual_tokens=10), build(BERT_BASE, AutoModel)) == 10 * 768


def test_prefix_tuning_is_tokens_times_layers_times_two_kv_dims() -> None:
    assert trainable(PrefixTuning(num_virtual_tokens=20), build(LLAMA, AutoModelForCausalLM)) == 20 * 16 * 2 * 256
    assert trainable(PrefixTuning(num_virtual_tokens=10), build(BERT_BASE, AutoModel)) == 10 * 12 * 2 * 768


@pytest.mark.parametrize("r", [4, 8])
def test_loreft_is_two_r_d_plus_r_per_intervened_layer(r: int) -> None:
    # R (r x d) and W (r x d) and b (r) at each chosen block: 2·r·d + r (Wu et al., 2024)
    assert trainable(LoReFT(r=r), build(LLAMA, AutoModelForCausalLM)) == 16 * (2 * r * 2048 + r)
    assert trainable(LoReFT(r=r, layers=[0, -1]), build(BERT_BASE, AutoModel)) == 2 * (2 * r * 768 + r)
