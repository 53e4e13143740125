"""KTO on unpaired feedback and on preference pairs, the reference-free preference objectives (SimPO, ORPO),
length-normalised IPO and the critic-free RL variants (Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE++) train a few steps
with LoRA and with Full on a tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from ftlab.data import FeedbackDataModule, PreferenceDataModule, PromptDataModule
from ftlab.module import FineTuneModule
from ftlab.objectives import DPO, GRPO, KTO, ORPO, SimPO
from ftlab.objectives.dpo import IPO
from ftlab.rewards import FunctionReward
from tests.conftest import REPO, quiet_trainer
from tests.integration.test_method_contract import LLAMA_64, METHODS

PAIRS = REPO / "ftlab" / "assets" / "preference_pairs.jsonl"
PROMPTS = REPO / "ftlab" / "assets" / "synthetic_prompts.jsonl"
FEEDBACK = REPO / "ftlab" / "assets" / "feedback_examples.jsonl"

PREFERENCE = {
    "simpo": lambda: SimPO(beta=2.0, gamma=0.5),
    "orpo": lambda: ORPO(lam=0.1),
    "ipo_normalized": lambda: DPO(beta=0.1, loss=IPO(length_normalized=True)),
}
RL = {
    "dr_grpo": {"scale_rewards": False, "loss_level": "dr_grpo"},
    "dapo": {"beta": 0.0, "epsilon_high": 0.28, "global_tokens": True, "dynamic_sampling": True, "overlong_buffer": 2},
    "gspo": {"importance_level": "sequence", "loss_level": "sequence"},
    "rloo": {"advantage": "rloo", "importance_level": "sequence_sum", "loss_level": "sequence", "kl_in_reward": True},
    "reinforce_pp": {"advantage": "reinforce_pp"},
}


def odd_first_token(completion_ids: list[list[int]], **_: Any) -> list[float]:
    """1 when a completion starts with an odd token id: varies between samples even for an untrained model."""
    return [float(bool(ids) and ids[0] % 2 == 1) for ids in completion_ids]


@pytest.fixture(scope="module")
def backbone():
    from ftlab.models import TinyBackbone

    return TinyBackbone(config=LLAMA_64, vocab_size=512)


def trained(module: FineTuneModule, run: Any) -> None:
    module.configure_model()
    declared = set(module.method.trainable_parameters(module.model))
    before = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    run()
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k not in declared), "a frozen weight moved"
    assert any(not torch.equal(before[k], after[k]) for k in declared), "nothing trained"


@pytest.mark.parametrize("name", sorted(PREFERENCE))
@pytest.mark.parametrize("method", ["full", "lora"])
def test_preference_variants_train(name: str, method: str, backbone, tmp_path: Path) -> None:
    pl.seed_everything(0)
    objective = PREFERENCE[name]()
    module = FineTuneModule(backbone, METHODS[method](), objective, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    dm = PreferenceDataModule(train=str(PAIRS), val_fraction=0.1, batch_size=4, max_length=64)
    trained(module, lambda: quiet_trainer(tmp_path, 3).fit(module, dm))
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert 0 <= metrics["val/rewards/accuracy"] <= 1 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert 0 <= metrics["val/choice/accuracy"] <= 1  # the measure all preference objectives share
    # SimPO and ORPO need no reference: not even a frozen copy for Full
    if name != "ipo_normalized":
        assert module.reference_model is None
    if name == "orpo":
        assert metrics["train/nll"] > 0


@pytest.mark.parametrize("name", sorted(RL))
@pytest.mark.parametrize("method", ["full", "lora"])
def test_rl_variants_train(name: str, method: str, backbone, tmp_path: Path) -> None:
    pl.seed_everything(0)
    objective = GRPO(rewards=[FunctionReward(odd_first_token)], num_generations=4, max_new_tokens=4, **RL[name])
    module = FineTuneModule(backbone, METHODS[method](), objective, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    dm = PromptDataModule(train=str(PROMPTS), val_fraction=0.125, batch_size=2, max_length=32)
    trained(module, lambda: quiet_trainer(tmp_path, 2, limit_val_batches=1).fit(module, dm))
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert metrics["train/reward_group_std"] >= 0 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    if name == "dapo":
        assert 0 < metrics["train/kept_fraction"] <= 1 and module.reference_model is None
    if name == "rloo":  # the KL went into the reward: logged beside the reward the advantages saw
        assert torch.isfinite(torch.tensor([metrics["train/kl"], metrics["train/shaped_reward"]])).all()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_kto_trains_on_unpaired_feedback(method: str, backbone, tmp_path: Path) -> None:
    pl.seed_everything(0)
    module = FineTuneModule(
        backbone, METHODS[method](), KTO(beta=0.1), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3)
    )
    dm = FeedbackDataModule(train=str(FEEDBACK), val_fraction=0.1, batch_size=4, max_length=64)
    trained(module, lambda: quiet_trainer(tmp_path, 3).fit(module, dm))
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert metrics["train/kl"] >= 0 and torch.isfinite(torch.tensor(metrics["val/loss"]))
    assert (module.reference_model is None) == module.method.supports_disable  # a frozen copy for Full only


@pytest.mark.parametrize("method", ["full", "lora"])
def test_kto_trains_on_preference_pairs(method: str, backbone, tmp_path: Path) -> None:
    pl.seed_everything(0)
    module = FineTuneModule(
        backbone, METHODS[method](), KTO(beta=0.1), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3)
    )
    dm = PreferenceDataModule(train=str(PAIRS), val_fraction=0.1, batch_size=4, max_length=64)
    trained(module, lambda: quiet_trainer(tmp_path, 3).fit(module, dm))
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert metrics["train/kl"] >= 0 and torch.isfinite(torch.tensor(metrics["val/loss"]))
    assert 0 <= metrics["val/choice/accuracy"] <= 1  # on the held-out pairs, as the pairwise objectives
    assert metrics["val/rewards/desirable"] != metrics["val/rewards/undesirable"]


def test_a_bad_feedback_row_stops_the_cli_naming_file_and_row(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ftlab.cli import main
    from tests.conftest import write_jsonl

    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("earlier work")
    rows = [{"prompt": f"Q{i}", "completion": f"A{i}", "label": True} for i in range(5)]
    rows.append({"prompt": "Q", "completion": "A", "label": "maybe"})
    data = write_jsonl(tmp_path / "feedback.jsonl", rows)
    argv = [
        "fit",
        "--config",
        str(REPO / "tests" / "integration" / "configs" / "resume_base.yaml"),
        "--model.method=ftlab.methods.LoRA",
        "--model.objective=ftlab.objectives.KTO",
        "--data=ftlab.data.FeedbackDataModule",
        f"--data.train={data}",
        f"--trainer.default_root_dir={run}",
    ]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-1500:]
    assert f"data file {data} row 5 'label' must be true or false (desirable or not), got 'maybe'" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]
