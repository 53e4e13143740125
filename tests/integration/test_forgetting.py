"""Forgetting tools end to end on a tiny Llama: EWC + LoRA fits, the Fisher cache, resume, the probe in
summary.json, the configs composed on the quickstart, EWC under DPO, classification, GRPO and PPO, a
task A -> task B chain with online EWC, and continued pretraining on raw text."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ftlab import runfolder
from ftlab.callbacks import ForgettingProbe
from ftlab.callbacks.forgetting import BUNDLED_TEXT
from ftlab.chain import FromRun
from ftlab.cli import FTLabCLI
from ftlab.data import (
    ClassificationDataModule,
    FineTuneDataModule,
    PreferenceDataModule,
    PromptDataModule,
    SFTDataModule,
    TextDataModule,
)
from ftlab.methods import Full, LoRA
from ftlab.models import TinyBackbone
from ftlab.module import FineTuneModule
from ftlab.objectives import DPO, GRPO, PPO, SFT, Classification
from ftlab.objectives.base import Objective
from ftlab.regularizers import EWC, L2SP
from ftlab.regularizers.ewc import FISHER_FILE
from ftlab.regularizers.fisher_estimate import FisherEstimate
from ftlab.rewards import FunctionReward
from tests.conftest import REPO, TINY_BERT, quiet_trainer, write_jsonl

PROBE = {"max_length": 64, "max_tokens": 256, "batch_size": 4}


def ewc(**kwargs) -> EWC:
    return EWC(data=BUNDLED_TEXT, strength=100.0, samples=4, max_length=32, **kwargs)


def fit(
    backbone,
    method,
    regs,
    data: Path,
    root: Path,
    steps: int = 3,
    ckpt: Path | None = None,
    probes: tuple[ForgettingProbe, ...] = (),
) -> pl.Trainer:
    module = FineTuneModule(
        backbone, method, SFT(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), regularizers=regs
    )
    trainer = quiet_trainer(
        root,
        steps,
        enable_checkpointing=True,
        num_sanity_val_steps=0,
        callbacks=[
            ForgettingProbe(**PROBE),
            *probes,
            ModelCheckpoint(dirpath=root / "checkpoints", save_last=True),
        ],
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


class Penalties(pl.Callback):
    """The logged EWC term after every training batch."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(trainer.callback_metrics["train/reg/ewc"]))


def reviews(path: Path, n: int, offset: int = 0) -> Path:
    words = [("dull", "negative"), ("great", "positive"), ("awful", "negative"), ("fine", "positive")]
    rows = [
        {"text": f"the film was {words[i % 4][0]} {i}", "label": words[i % 4][1]} for i in range(offset, offset + n)
    ]
    return write_jsonl(path, rows)


def mean_token_id(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **_) -> list[float]:
    """A reward that differs between any two samples (unlike a token's share, 0 for most short samples of a
    random model): GRPO's group advantages are then never all zero, and every update moves the weights."""
    return [sum(ids) / max(len(ids), 1) / 512 for ids in completion_ids]


def other_objective(
    name: str, llama: TinyBackbone, tmp: Path
) -> tuple[TinyBackbone, Objective, EWC, FineTuneDataModule]:
    """(backbone, objective, EWC on old data, the run's datamodule) for one objective other than SFT. Old
    data: preference pairs scored with DPO's own loss, reviews with the classifier's, text with the LM loss
    for GRPO and PPO (whose prompt data EWC refuses)."""
    assets = REPO / "ftlab" / "assets"
    reward = [FunctionReward(mean_token_id)]
    if name == "dpo":
        pairs = str(assets / "preference_pairs.jsonl")
        old = PreferenceDataModule(train=pairs, max_length=64)
        return (
            llama,
            DPO(beta=0.1),
            EWC(data=old, strength=100.0, samples=2),
            PreferenceDataModule(train=pairs, batch_size=4, max_length=64),
        )
    if name == "classification":
        old = ClassificationDataModule(train=str(reviews(tmp / "old.jsonl", 8, offset=100)), max_length=32)
        data = ClassificationDataModule(train=str(reviews(tmp / "new.jsonl", 24)), batch_size=8, max_length=32)
        return (
            TinyBackbone(config=TINY_BERT, vocab_size=512),
            Classification(num_labels=2),
            EWC(data=old, strength=100.0, samples=2),
            data,
        )
    prompts = PromptDataModule(train=str(assets / "synthetic_prompts.jsonl"), batch_size=4, max_length=32)
    if name == "grpo":
        objective = GRPO(rewards=reward, num_generations=2, max_new_tokens=4, updates_per_batch=2)
    else:
        objective = PPO(rewards=reward, max_new_tokens=4, epochs=2, minibatch_size=2, kl_target=1.0)
    return llama, objective, EWC(data=BUNDLED_TEXT, strength=100.0, samples=2, max_length=32), prompts


OLD_DATA_LOSS = {"dpo": "DPO", "classification": "Classification", "grpo": "lm_nll", "ppo": "lm_nll"}


@pytest.mark.parametrize("name", ["dpo", "classification", "grpo", "ppo"])
def test_ewc_regularizes_other_objectives(name: str, tiny_llama, tmp_path: Path) -> None:
    pl.seed_everything(0)
    backbone, objective, reg, data = other_objective(name, tiny_llama, tmp_path)
    reg.cache = False  # each objective estimates its own Fisher
    method = Full() if name == "classification" else LoRA(r=4)
    module = FineTuneModule(
        backbone, method, objective, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), regularizers=[reg]
    )
    penalties = Penalties()
    trainer = quiet_trainer(tmp_path, 4, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[penalties])
    trainer.fit(module, data)
    estimate = fisher_callback(trainer)
    assert estimate.source == "computed" and estimate.loss == OLD_DATA_LOSS[name]
    assert any((f > 0).any() for f in reg.fisher.get().values())
    summary = json.loads((tmp_path / runfolder.SUMMARY).read_text())
    assert summary["steps"] == 4 and summary["metrics"]["train/reg/ewc"] > 0
    # the first update's penalty is taken at the anchors: 0; every later one pulls back a moved weight.
    # An online-RL batch logs the mean over its updates (GRPO 2 per batch, PPO 4), the first one's included
    later = penalties.values
    if module.automatic_optimization:
        assert len(later) == 4 and later[0] == 0.0
        later = later[1:]
    assert later and all(v > 0 for v in later), penalties.values


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


def task_a_probe(sft_file: Path) -> dict:
    """A probe on task A's validation rows (the split of A's own data: quickstart's val_fraction 0.1)."""
    rows = {"train": str(sft_file), "val_fraction": 0.1, "max_length": 64}
    return {"prefix": "task_a", "data": {"class_path": "ftlab.data.SFTDataModule", "init_args": rows}}


def test_task_b_starts_from_task_a_and_carries_its_fisher(
    sft_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    a = tmp_path / "a"  # task A through the CLI: a run folder with its config, weights, Fisher and A's metric
    probe = {"class_path": "ftlab.callbacks.ForgettingProbe", "init_args": task_a_probe(sft_file)}
    (tmp_path / "probe.yaml").write_text(json.dumps({"trainer": {"callbacks+": [probe]}}))  # JSON is YAML
    FTLabCLI(
        args=[
            "fit",
            *("--config", str(REPO / "experiments/quickstart.yaml")),
            *("--config", str(REPO / "experiments/regularizers/ewc.yaml")),
            f"--trainer.default_root_dir={a}",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks=[]",
            *("--config", str(tmp_path / "probe.yaml")),
            f"--data.init_args.train={sft_file}",
            "--data.init_args.max_length=64",
            f"--model.regularizers.init_args.data={BUNDLED_TEXT}",
            "--model.regularizers.init_args.samples=2",
            "--model.regularizers.init_args.online=true",
        ]
    )
    f_a = runfolder.load_weights(a / FISHER_FILE)
    a_weights = runfolder.load_weights(a / runfolder.WEIGHTS)
    a_end = json.loads((a / runfolder.SUMMARY).read_text())["metrics"]["task_a/ppl"]  # at A's final weights
    # task B: other answers than A's, probed on A's validation rows as A was
    b_rows = [{"instruction": f"Name colour number {i}.", "output": f"colour {i} is blue"} for i in range(24)]
    b_file = write_jsonl(tmp_path / "b.jsonl", b_rows)
    b_probe = task_a_probe(sft_file)
    b_probe["data"] = SFTDataModule(**b_probe["data"]["init_args"])
    task_b = fit(
        FromRun(str(a)),
        Full(),
        [ewc(online=True, gamma=0.5)],
        b_file,
        tmp_path / "b",
        probes=(ForgettingProbe(**b_probe),),
    )
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
    # forgetting of A: its metric at A's end, before B (the same weights, reloaded: equal) and after B.
    # Which way it moves is not asserted: two steps from a random start leave both tasks learning common
    # tokens, and B lowers A's perplexity here (about 1188 -> 580); benchmarks/forgetting.py measures real forgetting
    b = json.loads((tmp_path / "b" / runfolder.SUMMARY).read_text())["metrics"]
    assert 1.0 < a_end < float("inf")
    assert b["task_a/ppl_before"] == pytest.approx(a_end, rel=1e-5)
    assert b["task_a/delta_ppl"] == pytest.approx(b["task_a/ppl"] - b["task_a/ppl_before"], rel=1e-4)
    assert b["task_a/ppl"] != pytest.approx(a_end, rel=1e-3), "B did not move A's metric"


class FirstBatch(pl.Callback):
    """The first batch's LM loss recomputed by hand from the starting model, and the loss of every step."""

    def __init__(self) -> None:
        self.by_hand: float | None = None
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.by_hand is not None:
            return
        real = batch.attention_mask.bool()
        assert torch.equal(batch.labels[real], batch.input_ids[real]) and batch.num_loss_tokens == int(real.sum())
        with torch.no_grad():
            logits = pl_module.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        # every real token after the first of its row is a target: positions t predict t + 1
        targets = batch.input_ids[:, 1:].masked_fill(~real[:, 1:], -100)
        self.by_hand = float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_continued_pretraining_on_raw_text(tiny_llama, tmp_path: Path) -> None:
    # 8 rows of 32 tokens of the bundled WikiText-2 excerpt, 2 batches of 4, 4 epochs: 8 steps
    pl.seed_everything(0)
    module = FineTuneModule(tiny_llama, Full(), SFT(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    first = FirstBatch()
    trainer = quiet_trainer(tmp_path, 8, limit_val_batches=0, callbacks=[first])
    trainer.fit(module, TextDataModule(train=BUNDLED_TEXT, max_length=32, batch_size=4, limit=8))
    assert len(first.losses) == 8
    # the loss is the NLL of every token (nothing masked as a prompt): the hand-computed value at the start
    assert first.losses[0] == pytest.approx(first.by_hand, rel=1e-4)
    assert first.losses[0] == pytest.approx(math.log(512), rel=0.1)  # a random model: about ln(vocab)
    assert max(first.losses[-2:]) < 0.8 * first.losses[0], first.losses
