"""LoReFT fits (SFT loss falls, DPO runs), a task mixture with per-task validation, generation eval in a fit."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from ftlab.callbacks.generation_eval import FILE, GenerationEval
from ftlab.data import MixtureDataModule, PreferenceDataModule, SFTDataModule
from ftlab.methods import LoReFT
from ftlab.module import FineTuneModule
from ftlab.objectives import DPO, SFT
from tests.conftest import REPO, write_jsonl
from tests.conftest import quiet_trainer as trainer


def test_loreft_sft_loss_falls_and_dpo_runs(tiny_llama, sft_file: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    # first=64 covers these short rows whole: a random tiny backbone carries little from the prompt's first
    # tokens to the answer (with first=6 the loss moves by 0.01 in 12 steps)
    method = LoReFT(r=4, first=64)
    module = FineTuneModule(tiny_llama, method, SFT(), optimizer=lambda p: torch.optim.AdamW(p, lr=2e-2))
    trainer(tmp_path / "sft", 12).fit(module, SFTDataModule(train=str(sft_file), batch_size=8, max_length=64))
    curve = json.loads((tmp_path / "sft" / "summary.json").read_text())["loss_curve"]
    assert curve[-1][1] < curve[0][1] - 0.15, curve  # 6.24 -> 5.98 measured

    pl.seed_everything(0)
    dpo = DPO(beta=0.1)
    module = FineTuneModule(tiny_llama, LoReFT(r=4, first=6), dpo, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    pairs = REPO / "ftlab" / "assets" / "preference_pairs.jsonl"
    trainer(tmp_path / "dpo", 3).fit(module, PreferenceDataModule(train=str(pairs), batch_size=4, max_length=64))
    summary = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    assert summary["steps"] == 3 and module.reference_model is None  # disabled() is the reference
    assert abs(summary["train_loss_first"] - 0.6931) < 1e-3  # identity at step 0: policy = reference, ln 2


def test_mixture_fits_and_validates_per_task(tiny_llama, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"Say {i}.", "output": f"number {i}"} for i in range(24)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"Echo {i}", "output": f"{i} {i} {i}"} for i in range(12)])

    def mixture() -> MixtureDataModule:
        tasks = {
            "say": SFTDataModule(train=str(a), val_fraction=0.25, batch_size=4, max_length=64),
            "echo": SFTDataModule(train=str(b), val_fraction=0.25, batch_size=4, max_length=64),
        }
        return MixtureDataModule(tasks=tasks, weights={"say": 1.0, "echo": 1.0})

    pl.seed_everything(0)
    module = FineTuneModule(tiny_llama, LoReFT(r=2, first=4), SFT(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    run = trainer(tmp_path / "mixture", 4)
    run.fit(module, mixture())
    logged = {k for k in run.callback_metrics if k.startswith("val/") and k.endswith("loss")}
    assert logged == {"val/say/loss", "val/echo/loss", "val/loss"}
    per_task = {k: float(run.callback_metrics[k]) for k in logged}
    assert per_task["val/say/loss"] != per_task["val/echo/loss"]
    mean = (per_task["val/say/loss"] + per_task["val/echo/loss"]) / 2
    assert per_task["val/loss"] == pytest.approx(mean, rel=1e-6)  # val/loss: the unweighted mean over tasks


def test_generation_eval_writes_answers_and_summary_metrics(tiny_llama, sft_file: Path, tmp_path: Path) -> None:
    held = write_jsonl(
        tmp_path / "held.jsonl",
        [{"instruction": f"Say the word number {i}.", "output": f"word {i}", "answer": str(i)} for i in range(5)],
    )
    pl.seed_everything(0)
    method = LoReFT(r=4, first=6)
    module = FineTuneModule(tiny_llama, method, SFT(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    callback = GenerationEval(file=str(held), gsm8k_field="answer", max_new_tokens=8, batch_size=2)
    trainer(tmp_path, 3, callbacks=[callback]).fit(module, SFTDataModule(train=str(sft_file), batch_size=8))
    rows = [json.loads(line) for line in (tmp_path / FILE).read_text().splitlines()]
    assert len(rows) == 5 and rows[0]["reference"] == "word 0" and isinstance(rows[0]["answer"], str)
    assert rows[0]["prompt"] == "Say the word number 0." and rows[0]["step"] == 3
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    for name in ("exact_match", "rougeL_f", "bleu", "gsm8k_accuracy"):
        assert 0.0 <= metrics[f"gen/{name}"] <= 1.0


def test_mixture_of_preference_tasks_keeps_nested_metrics_apart(tiny_llama, tmp_path: Path) -> None:
    """DPO keeps its metrics in a ModuleDict (`val["accuracy"]`, ...): each task still gets its own copy."""
    rows = [
        json.loads(line) for line in (REPO / "ftlab" / "assets" / "preference_pairs.jsonl").read_text().splitlines()
    ]
    a = write_jsonl(tmp_path / "a.jsonl", rows[:20])
    b = write_jsonl(tmp_path / "b.jsonl", rows[20:])
    tasks = {
        "first": PreferenceDataModule(train=str(a), val_fraction=0.25, batch_size=4, max_length=64),
        "second": PreferenceDataModule(train=str(b), val_fraction=0.25, batch_size=4, max_length=64),
    }
    pl.seed_everything(0)
    module = FineTuneModule(tiny_llama, LoReFT(r=2, first=4), DPO(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    run = trainer(tmp_path / "dpo", 3)
    run.fit(module, MixtureDataModule(tasks=tasks, weights={"first": 1.0, "second": 1.0}))
    metrics = {k: float(v) for k, v in run.callback_metrics.items() if k.startswith("val/")}
    assert {"val/first/loss", "val/second/loss", "val/loss"} <= set(metrics)
    assert metrics["val/first/loss"] != metrics["val/second/loss"]
    assert metrics["val/loss"] == pytest.approx((metrics["val/first/loss"] + metrics["val/second/loss"]) / 2, rel=1e-5)
