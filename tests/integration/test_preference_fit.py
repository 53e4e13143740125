"""DPO and reward modelling with every method that can take them, a few steps each on a tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from ftlab.data import PreferenceDataModule
from ftlab.module import FineTuneModule
from ftlab.objectives import DPO, Reward
from ftlab.objectives.dpo import IPO, Sigmoid
from tests.conftest import REPO, quiet_trainer
from tests.integration.test_method_contract import LLAMA_64, METHODS

PAIRS = REPO / "ftlab" / "assets" / "preference_pairs.jsonl"
OBJECTIVES = {"dpo": lambda: DPO(beta=0.1), "reward": Reward}


@pytest.fixture(scope="module")
def backbone():
    from ftlab.models import TinyBackbone

    return TinyBackbone(config=LLAMA_64, vocab_size=512)


def fit(module: FineTuneModule, root: Path, steps: int = 3) -> pl.Trainer:
    dm = PreferenceDataModule(train=str(PAIRS), val_fraction=0.1, batch_size=4, max_length=64)
    trainer = quiet_trainer(root, steps)
    trainer.fit(module, dm)
    return trainer


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_with_preference_objectives(method, objective, backbone, tmp_path) -> None:
    pl.seed_everything(0)
    module = FineTuneModule(
        backbone, METHODS[method](), OBJECTIVES[objective](), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3)
    )
    module.configure_model()
    declared = set(module.method.trainable_parameters(module.model))
    before = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    fit(module, tmp_path)
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k not in declared), "a frozen weight moved"
    summary = json.loads((tmp_path / "summary.json").read_text())
    key = "rewards/accuracy" if objective == "dpo" else "accuracy"
    assert summary["steps"] == 3 and 0 <= summary["metrics"][f"val/{key}"] <= 1
    if objective == "dpo":  # a frozen copy only where the method cannot switch itself off
        assert (module.reference_model is None) == module.method.supports_disable


def test_dpo_learns_the_bundled_preferences_and_precomputing_matches(backbone, tmp_path) -> None:
    from ftlab.methods import LoRA

    losses = {}
    for precompute in (False, True):
        pl.seed_everything(0)
        module = FineTuneModule(
            backbone,
            LoRA(r=8),
            DPO(beta=0.1, precompute_reference=precompute),
            optimizer=lambda p: torch.optim.AdamW(p, lr=5e-3),
        )
        trainer = fit(module, tmp_path / str(precompute), steps=12)
        losses[precompute] = json.loads((tmp_path / str(precompute) / "summary.json").read_text())["loss_curve"]
        assert trainer.callback_metrics["train/rewards/margin"] > 0
    assert (tmp_path / "True" / "reference_logps.safetensors").exists()
    first, last = losses[True][0][1], losses[True][-1][1]
    assert last < first < 0.7  # starts at ln 2 = 0.693 at the reference and falls
    # the cached reference gives the same losses as a reference forward pass each step (float tolerance)
    for (s1, a), (s2, b) in zip(losses[False], losses[True], strict=True):
        assert s1 == s2 and abs(a - b) < 1e-4


@pytest.mark.parametrize("loss", [Sigmoid(label_smoothing=0.1), IPO()])
def test_loss_variants_train(loss, backbone, tmp_path) -> None:
    from ftlab.methods import LoRA

    pl.seed_everything(0)
    module = FineTuneModule(backbone, LoRA(r=4), DPO(beta=0.5, loss=loss))
    fit(module, tmp_path, steps=2)
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2


def test_reference_table_follows_the_data_and_frees_the_copy(backbone, tmp_path) -> None:
    from ftlab.methods import Full

    losses = []
    for max_length in (64, 48):  # two fits into one run folder on differently cut data
        pl.seed_everything(0)
        module = FineTuneModule(backbone, Full(), DPO(precompute_reference=True))
        dm = PreferenceDataModule(train=str(PAIRS), val_fraction=0.1, batch_size=4, max_length=max_length)
        trainer = quiet_trainer(tmp_path, 1)
        trainer.fit(module, dm)
        losses.append(json.loads((tmp_path / "summary.json").read_text())["loss_curve"][0][1])
        assert module.reference_model is None  # the table replaced the frozen copy
        assert module.objective.reference_table is None  # and is not reused after the fit
    # each fit starts at the reference: ln 2, not a stale table's value
    assert all(abs(loss - 0.6931) < 1e-3 for loss in losses)


def test_cells_of_a_study_share_one_reference_table(backbone, tmp_path, monkeypatch) -> None:
    from ftlab.methods import Full, LoRA
    from ftlab.objectives.reference_cache import SHARED, ReferenceCache

    computed: list[str] = []
    real = ReferenceCache.compute

    def counting(self, trainer, pl_module):
        computed.append(trainer.default_root_dir)
        return real(self, trainer, pl_module)

    monkeypatch.setattr(ReferenceCache, "compute", counting)

    def cell(method, root: Path) -> list:
        pl.seed_everything(0)
        fit(FineTuneModule(backbone, method, DPO(precompute_reference=True)), root, steps=2)
        return json.loads((root / "summary.json").read_text())["loss_curve"]

    monkeypatch.setenv(SHARED, str(tmp_path / "shared"))
    cell(LoRA(r=4), tmp_path / "lora")  # the first cell of the study computes the table
    shared = cell(Full(), tmp_path / "full")  # another method, same backbone and data: reads it
    assert computed == [str(tmp_path / "lora")] and len(list((tmp_path / "shared").iterdir())) == 1
    monkeypatch.delenv(SHARED)
    alone = cell(Full(), tmp_path / "alone")  # the same cell computing its own table
    assert computed[-1] == str(tmp_path / "alone") and shared == alone  # identical losses, bit for bit
