"""One contract, every method: the same checks on a tiny Llama with SFT (as peft's shared tuner tests).

- `trainable_parameters` is exactly what trains (for GradualUnfreeze, once every group is unfrozen);
- frozen weights are bit-identical after training, every trainable weight moved;
- checkpoint keys equal the module's trainable state; weights round-trip into a fresh module;
- `disabled()` gives the base model's outputs exactly, after training;
- `apply` is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM

from ftlab.data import SFTDataModule
from ftlab.methods import Method
from ftlab.models import TinyBackbone
from ftlab.module import FineTuneModule
from ftlab.objectives import SFT
from tests import catalogue

# hidden 64 so that every linear layer's input is a multiple of bitsandbytes' 4-bit block of 64
LLAMA_64 = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}
CONTRACT_OPTIONS: dict[str, dict[str, Any]] = {
    "lora": {"dropout": 0.1},
    "adapter_sequential": {"train_norms": True},
    "reft": {"r": 4, "first": 3},  # a last-block edit of prompt tokens reaches no loss
}
"""Variants the contract checks beyond the catalogue's tiny configuration."""
HEAD_ONLY = {"feature_extraction"}  # trains an objective's head only: SFT has none
METHODS: dict[str, Callable[[], Method]] = {
    name: partial(factory, **CONTRACT_OPTIONS.get(name, {}))
    for name, factory in catalogue.METHODS.items()
    if name not in HEAD_ONLY
}
"""The catalogue's methods as the contract (and the preference and RL fits) build them."""


@pytest.fixture(scope="module")
def backbone() -> TinyBackbone:
    return TinyBackbone(config=LLAMA_64, vocab_size=512)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # state_dict, not parameters: bitsandbytes repacks 4-bit weights in place for CPU inference and
    # state_dict gives them back in their stored layout
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def outputs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, -ids.shape[1] :]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name: str, backbone: TinyBackbone, sft_file: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    method = METHODS[name]()
    module = FineTuneModule(backbone, method, SFT(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    module.configure_model()
    model = module.model
    assert method.apply(model) is model, "apply is not idempotent"
    declared = set(method.trainable_parameters(model))
    before = snapshot(model)

    dm = SFTDataModule(train=str(sft_file), val_fraction=0.25, batch_size=4, max_length=64)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
    )
    trainer.fit(module, dm)

    assert declared == {n for n, p in model.named_parameters() if p.requires_grad}
    after = snapshot(model)
    frozen = set(before) - declared
    moved = sorted(k for k in frozen if not torch.equal(before[k], after[k]))
    assert not moved, f"frozen weights moved: {moved[:3]}"
    still = sorted(k for k in declared if torch.equal(before[k], after[k]))
    assert not still, f"trainable weights did not move: {still[:3]}"

    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == set(module.trainable_state_dict()) == {"model." + k for k in declared}

    model.eval()
    ids = torch.randint(3, 500, (2, 9))
    trained = outputs(model, ids)
    fresh = FineTuneModule(backbone, METHODS[name](), SFT())
    fresh.configure_model()
    fresh.load_trainable(tmp_path / "trainable.safetensors")
    fresh.eval()
    assert torch.equal(outputs(fresh.model, ids), trained), "weights did not round-trip"

    if method.supports_disable:
        # train mode (no_grad): bitsandbytes' CPU inference kernel, which ftlab keeps off for the trained
        # QLoRA model, would otherwise serve the fresh base; the tiny Llama has no dropout of its own
        base = backbone.load_model(AutoModelForCausalLM, **method.load_kwargs()).train()
        model.train()
        with method.disabled(model) as ref:
            assert torch.equal(outputs(ref, ids), outputs(base, ids)), "disabled() is not the base model"
        assert not torch.equal(outputs(model, ids), outputs(base, ids)), "the method changed nothing"
