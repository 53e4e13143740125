"""Forgetting tools end to end on a tiny Llama: EWC + LoRA fits, the Fisher cache, resume, the probe in
summary.json, the configs composed on the quickstart, and a task A -> task B chain with online EWC."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ftlab import runfolder
from ftlab.callbacks import ForgettingProbe
from ftlab.callbacks.fisher import FisherEstimate
from ftlab.callbacks.forgetting import BUNDLED_TEXT
from ftlab.chain import FromRun
from ftlab.cli import FTLabCLI
from ftlab.data import SFTDataModule
from ftlab.methods import Full, LoRA
from ftlab.module import FineTuneModule
from ftlab.objectives import SFT
from ftlab.regularizers import EWC, L2SP
from ftlab.regularizers.ewc import FISHER_FILE
from tests.conftest import REPO

PROBE = {"max_length": 64, "max_tokens": 256, "batch_size": 4}


def ewc(**kwargs) -> EWC:
    return EWC(data=BUNDLED_TEXT, strength=100.0, samples=4, max_length=32, **kwargs)


def fit(backbone, method, regs, data: Path, root: Path, steps: int = 3, ckpt: Path | None = None) -> pl.Trainer:
    module = FineTuneModule(
        backbone, method, SFT(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), regularizers=regs
    )
    trainer = pl.Trainer(
        default_root_dir=root,
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        callbacks=[ForgettingProbe(**PROBE), ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)],
    )
    trainer.fit(module, SFTDataModule(train=str(data), val_fraction=0.25, batch_size=4, max_length=64), ckpt_path=ckpt)
    return trainer


def fisher_callback(trainer: pl.Trainer) -> FisherEstimate:
    return next(c for c in trainer.callbacks if isinstance(c, FisherEstimate))


def test_ewc_lora_fit_probe_cache_and_resume(tiny_llama, sft_file: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    first = fit(tiny_llama, LoRA(r=4), [ewc()], sft_file, tmp_path / "a")
    reg = first.lightning_module.regularizers[0]
    assert fisher_callback(first).source == "computed"
    fisher, anchors = reg.fisher.get(), reg.anchors.get()
    assert set(fisher) == set(first.lightning_module.method.trainable_parameters(first.lightning_module.model))
    assert all((f >= 0).all() for f in fisher.values()) and any((f > 0).any() for f in fisher.values())
    summary = json.loads((tmp_path / "a" / runfolder.SUMMARY).read_text())["metrics"]
    assert summary["train/reg/ewc"] > 0
    assert summary["forget/delta_ppl"] == pytest.approx(summary["forget/ppl"] - summary["forget/ppl_before"], rel=1e-4)
    assert (tmp_path / "a" / FISHER_FILE).is_file()

    pl.seed_everything(0)  # the same run again: the Fisher comes from the cache, unchanged
    second = fit(tiny_llama, LoRA(r=4), [ewc()], sft_file, tmp_path / "b")
    assert fisher_callback(second).source == "cache"
    again = second.lightning_module.regularizers[0].fisher.get()
    assert all(torch.equal(again[k], fisher[k]) for k in fisher)

    resumed = fit(tiny_llama, LoRA(r=4), [ewc()], sft_file, tmp_path / "c", 5, tmp_path / "a/checkpoints/last.ckpt")
    assert fisher_callback(resumed).source == "checkpoint" and resumed.global_step == 5
    kept = resumed.lightning_module.regularizers[0].anchors.get()
    assert all(torch.equal(kept[k], anchors[k]) for k in anchors), "resume re-anchored"
    probe = next(c for c in resumed.callbacks if isinstance(c, ForgettingProbe))
    assert probe.before == pytest.approx(summary["forget/ppl_before"])


def test_l2sp_pulls_full_fine_tuning(tiny_llama, sft_file: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    trainer = fit(tiny_llama, Full(), [L2SP(strength=1.0)], sft_file, tmp_path)
    reg = trainer.lightning_module.regularizers[0]
    assert fisher_callback(trainer).source is None and len(reg.fisher) == 0
    params = trainer.lightning_module.method.trainable_parameters(trainer.lightning_module.model)
    by_hand = 0.5 * sum(float((p.detach() - reg.anchors.get()[n]).square().sum()) for n, p in params.items())
    assert reg.penalty(None, params).item() == pytest.approx(by_hand, rel=1e-5) and by_hand > 0


def test_configs_compose_on_the_quickstart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    experiments = REPO / "experiments"
    FTLabCLI(
        args=[
            "fit",
            *("--config", str(experiments / "quickstart.yaml")),
            *("--config", str(experiments / "callbacks/forgetting.yaml")),
            *("--config", str(experiments / "regularizers/ewc.yaml")),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks=[]",  # keeps the quickstart's progress bar out of a quiet run
            "--trainer.callbacks+=ftlab.callbacks.ForgettingProbe",
            "--trainer.callbacks.max_tokens=512",
            "--data.init_args.max_length=64",
            f"--model.regularizers.init_args.data={BUNDLED_TEXT}",
            "--model.regularizers.init_args.samples=2",
        ]
    )
    metrics = json.loads((tmp_path / runfolder.SUMMARY).read_text())["metrics"]
    assert {"forget/ppl", "forget/ppl_before", "forget/delta_ppl", "train/reg/ewc"} <= set(metrics)


def test_task_b_starts_from_task_a_and_carries_its_fisher(
    sft_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    a = tmp_path / "a"  # task A through the CLI: a run folder with its config, weights and Fisher
    FTLabCLI(
        args=[
            "fit",
            *("--config", str(REPO / "experiments/quickstart.yaml")),
            *("--config", str(REPO / "experiments/regularizers/ewc.yaml")),
            f"--trainer.default_root_dir={a}",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks=[]",
            f"--data.init_args.train={sft_file}",
            "--data.init_args.max_length=64",
            f"--model.regularizers.init_args.data={BUNDLED_TEXT}",
            "--model.regularizers.init_args.samples=2",
            "--model.regularizers.init_args.online=true",
        ]
    )
    f_a = runfolder.load_weights(a / FISHER_FILE)
    a_weights = runfolder.load_weights(a / runfolder.WEIGHTS)
    task_b = fit(FromRun(str(a)), Full(), [ewc(online=True, gamma=0.5)], sft_file, tmp_path / "b")
    module = task_b.lightning_module
    reg = module.regularizers[0]
    # B started from A's final weights: its anchors are A's weights
    assert all(torch.equal(reg.anchors.get()[n.removeprefix("model.")], w) for n, w in a_weights.items())
    # F_B = γ·F_A + F_new, F_new being the estimate at B's start (a fresh module there reads it from the cache)
    start = FineTuneModule(FromRun(str(a)), Full(), SFT(), regularizers=[ewc(online=True)])
    start.configure_model()
    again = FisherEstimate(start.regularizers[0])
    f_new = again.estimate(start, start.method.trainable_parameters(start.model))
    assert again.source == "cache"
    # with several ranks, one rank's miss makes every rank compute (FSDP's passes are collectives)
    one_missed = SimpleNamespace(world_size=2, strategy=SimpleNamespace(reduce_boolean_decision=lambda hit, all: False))
    agreed = FisherEstimate(start.regularizers[0])
    f_agreed = agreed.estimate(start, start.method.trainable_parameters(start.model), one_missed)
    assert agreed.source == "computed"
    assert all(torch.allclose(f_agreed[n], f_new[n]) for n in f_new)
    for name, f in reg.fisher.get().items():
        assert torch.allclose(f, 0.5 * f_a[name] + f_new[name]), name
    # task A's metric after B: a probe on task A's validation rows
    task_probe = ForgettingProbe(data=SFTDataModule(train=str(sft_file), val_fraction=0.25, max_length=64))
    assert 1.0 < task_probe.perplexity(module) < float("inf")
