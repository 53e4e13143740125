"""End-to-end fits on a tiny Llama: Full, Freeze and LoRA with SFT, checkpoints and the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ftlab.data import SFTDataModule
from ftlab.errors import FTLabError
from ftlab.methods import Freeze, Full, LoRA
from ftlab.module import FineTuneModule, check_composition
from ftlab.objectives import SFT

METHODS = {"full": Full, "freeze": lambda: Freeze(last_blocks=1), "lora": lambda: LoRA(r=4)}


def build(backbone, method) -> FineTuneModule:
    return FineTuneModule(
        backbone=backbone, method=method, objective=SFT(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2)
    )


def fit(module: FineTuneModule, data: Path, root: Path, steps: int = 4) -> pl.Trainer:
    dm = SFTDataModule(train=str(data), val_fraction=0.25, batch_size=4, max_length=64)
    trainer = pl.Trainer(
        default_root_dir=root,
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0)],
    )
    trainer.fit(module, dm)
    return trainer


@pytest.mark.parametrize("name", sorted(METHODS))
def test_fit_changes_exactly_the_trainable_weights(name, tiny_llama, sft_file, tmp_path) -> None:
    pl.seed_everything(0)
    module = build(tiny_llama, METHODS[name]())
    module.configure_model()
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    trainable = set(module.method.trainable_parameters(module.model))
    fit(module, sft_file, tmp_path)
    after = dict(module.model.named_parameters())
    frozen = set(before) - trainable
    assert trainable and (name == "full" or frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen), "a frozen weight moved"
    assert all(not torch.equal(before[k], after[k]) for k in trainable), "a trainable weight did not move"

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["method"] == type(module.method).__name__ and summary["objective"] == "SFT"
    assert summary["steps"] == 4 and summary["tokens_seen"] > 0 and summary["tokens_per_sec"] > 0
    assert summary["trainable_params"] == sum(before[k].numel() for k in trainable)
    assert summary["total_params"] == sum(v.numel() for v in before.values())
    for key in ("peak_memory_mb", "wall_seconds", "train_loss", "val_loss", "val_ppl"):
        assert summary[key] > 0, key
    assert abs(summary["val_ppl"] - torch.tensor(summary["val_loss"]).exp().item()) < 1e-3 * summary["val_ppl"]
    assert (tmp_path / "DONE").exists() and (tmp_path / "trainable.safetensors").exists()


@pytest.mark.parametrize("name", ["lora", "freeze"])
def test_checkpoint_round_trip(name, tiny_llama, sft_file, tmp_path) -> None:
    pl.seed_everything(0)
    trained = build(tiny_llama, METHODS[name]())
    fit(trained, sft_file, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == set(trained.trainable_state_dict())
    ids = torch.randint(3, 500, (2, 10))
    trained.eval()
    with torch.no_grad():
        expected = trained.model(input_ids=ids).logits
    for source in (tmp_path / "checkpoints" / "last.ckpt", tmp_path / "trainable.safetensors"):
        fresh = build(tiny_llama, METHODS[name]())
        fresh.configure_model()
        fresh.load_trainable(source)
        fresh.eval()
        with torch.no_grad():
            assert torch.equal(fresh.model(input_ids=ids).logits, expected), source.name


def test_resume_restores_trainable_weights_and_optimizer(tiny_llama, sft_file, tmp_path) -> None:
    pl.seed_everything(0)
    first = build(tiny_llama, LoRA(r=4))
    fit(first, sft_file, tmp_path / "a", steps=3)
    resumed = build(tiny_llama, LoRA(r=4))
    dm = SFTDataModule(train=str(sft_file), val_fraction=0.25, batch_size=4, max_length=64)
    trainer = pl.Trainer(
        default_root_dir=tmp_path / "b",
        max_steps=5,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(resumed, dm, ckpt_path=tmp_path / "a" / "checkpoints" / "last.ckpt")
    assert trainer.global_step == 5


def test_a_checkpoint_of_another_method_is_refused(tiny_llama, sft_file, tmp_path) -> None:
    pl.seed_everything(0)
    fit(build(tiny_llama, LoRA(r=4)), sft_file, tmp_path, steps=1)
    other = build(tiny_llama, Freeze(last_blocks=1))
    other.configure_model()
    with pytest.raises(FTLabError, match="does not hold this run's trainable weights"):
        other.load_trainable(tmp_path / "trainable.safetensors")


def test_objective_and_datamodule_must_agree() -> None:
    class OtherBatchData:
        batch_type = dict

    with pytest.raises(FTLabError, match="SFT consumes SFTBatch batches but datamodule OtherBatchData yields"):
        check_composition(Full(), SFT(), OtherBatchData(), strategy=None)


def test_nan_loss_stops_with_the_step(tiny_llama, sft_file, tmp_path) -> None:
    module = FineTuneModule(
        backbone=tiny_llama, method=Full(), objective=SFT(), optimizer=lambda p: torch.optim.SGD(p, lr=float("nan"))
    )
    with pytest.raises(FTLabError, match=r"training loss is nan at step 1"):
        fit(module, sft_file, tmp_path, steps=3)
