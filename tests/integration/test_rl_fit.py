"""GRPO and PPO with the methods that serve them, a few steps each; the learning run is a benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from ftlab.data import PromptDataModule
from ftlab.module import FineTuneModule
from ftlab.objectives import GRPO, PPO
from ftlab.rewards import FunctionReward, TokenShare
from tests.conftest import REPO, quiet_trainer
from tests.integration.test_method_contract import LLAMA_64, METHODS

PROMPTS = REPO / "ftlab" / "assets" / "synthetic_prompts.jsonl"
RL_METHODS = ["full", "lora", "qlora", "adapter_sequential", "adapter_parallel", "adapter_hybrid", "prompt"]


def objective(name: str):
    reward = [FunctionReward(TokenShare(token_id=11))]
    if name == "grpo":
        return GRPO(rewards=reward, num_generations=2, max_new_tokens=4, updates_per_batch=2)
    return PPO(rewards=reward, max_new_tokens=4, epochs=2, minibatch_size=2, kl_target=1.0)


@pytest.fixture(scope="module")
def backbone():
    from ftlab.models import TinyBackbone

    return TinyBackbone(config=LLAMA_64, vocab_size=512)


@pytest.mark.parametrize("name", ["grpo", "ppo"])
@pytest.mark.parametrize("method", RL_METHODS)
def test_rl_objectives_with_methods(name, method, backbone, tmp_path: Path) -> None:
    pl.seed_everything(0)
    module = FineTuneModule(
        backbone, METHODS[method](), objective(name), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3)
    )
    module.configure_model()
    declared = set(module.method.trainable_parameters(module.model))
    before = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    dm = PromptDataModule(train=str(PROMPTS), val_fraction=0.125, batch_size=4, max_length=32)
    trainer = quiet_trainer(tmp_path, 4, limit_val_batches=1)
    trainer.fit(module, dm)
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k not in declared), "a frozen weight moved"
    assert any(not torch.equal(before[k], after[k]) for k in declared), "nothing trained"
    summary = json.loads((tmp_path / "summary.json").read_text())
    metrics = summary["metrics"]
    assert summary["steps"] == 4  # two rollout batches, two updates each
    assert 0 <= metrics["train/reward"] <= 1 and 0 < metrics["train/perf/generation_share"] < 1
    assert "val/reward" in metrics and "train/clip_fraction" in metrics
    assert (module.reference_model is None) == module.method.supports_disable
    if name == "ppo":
        assert {"train/value_loss", "train/explained_variance", "train/kl_coef"} <= set(metrics)
    else:
        assert "train/kl" in metrics
