"""A reward model trained by ftlab, read back from its run folder as a reward source of GRPO."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from ftlab.cli import FTLabCLI
from ftlab.data import PromptDataModule
from ftlab.errors import FTLabError
from ftlab.methods import LoRA
from ftlab.module import FineTuneModule
from ftlab.objectives import GRPO
from ftlab.objectives.rollouts import Rollout
from ftlab.reward_model import ModelReward
from ftlab.saved_run import load_run
from tests.conftest import REPO, quiet_trainer

PROMPTS = REPO / "ftlab" / "assets" / "synthetic_prompts.jsonl"


def fit_run(root: Path, *configs: str) -> Path:
    FTLabCLI(
        args=[
            "fit",
            *(a for c in ("quickstart.yaml", *configs) for a in ("--config", str(REPO / "experiments" / c))),
            f"--trainer.default_root_dir={root}",
            "--trainer.max_epochs=-1",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks=[]",
            "--data.init_args.max_length=64",
        ]
    )
    return root


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reward") / "run"
    return fit_run(root, "objectives/reward.yaml", "data/preference_example.yaml")


def rollout_of(prompts: list[str], completions: list[str]) -> Rollout:
    n = len(prompts)
    return Rollout(
        sequences=torch.zeros(n, 2, dtype=torch.long),
        attention_mask=torch.ones(n, 2),
        completion_mask=torch.ones(n, 1),
        prompt_length=1,
        prompts=prompts,
        completions=completions,
        completion_ids=[[0]] * n,
    )


def test_a_reward_run_scores_as_its_own_head(reward_run: Path) -> None:
    prompts = ["What is 2 + 2?", "Say hello.", "Name a colour, please, in one word."]
    completions = [" 4", " Go away.", " blue"]
    source = ModelReward(str(reward_run), batch_size=2, max_length=12)
    ours = source.score(rollout_of(prompts, completions), torch.device("cpu"))
    # by hand: the saved module's head on each text alone, cut to its last 12 tokens
    module = load_run(reward_run)
    tok = module.tokenizer
    expected = []
    for text in (p + c for p, c in zip(prompts, completions, strict=True)):
        ids = tok(text, add_special_tokens=False).input_ids[-12:]
        with torch.no_grad():
            expected.append(module.objective.score(module.model, torch.tensor([ids]), torch.ones(1, len(ids))))
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, torch.cat(expected), rtol=1e-5, atol=1e-5)
    assert len(set(ours.tolist())) == 3  # the texts got scores of their own


def test_grpo_learns_from_a_reward_run(reward_run: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    source = ModelReward(str(reward_run), name="rm")
    objective = GRPO(rewards=[source], num_generations=2, max_new_tokens=4)
    module = FineTuneModule(load_run(reward_run).backbone, LoRA(), objective)
    data = PromptDataModule(train=str(PROMPTS), val_fraction=0.0, batch_size=2, max_length=32)
    quiet_trainer(tmp_path, 2).fit(module, data)
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert "train/reward/rm" in metrics and metrics["train/reward/rm"] == metrics["train/reward"]
    assert all(not p.requires_grad for p in source.module(torch.device("cpu")).parameters())


def test_a_run_that_is_not_a_reward_model_is_named(tmp_path: Path) -> None:
    run = fit_run(tmp_path / "sft")
    with pytest.raises(FTLabError, match="is a SFT run, not a reward model"):
        ModelReward(str(run)).module(torch.device("cpu"))
    with pytest.raises(FTLabError, match=r"has no config\.yaml"):
        ModelReward(str(tmp_path / "nothing"))
