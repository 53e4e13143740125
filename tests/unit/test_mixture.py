"""Task mixtures: the probabilities by hand, the sampled shares on a fixed seed, per-task batches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ftlab.data import MixtureDataModule, PreferenceDataModule, SFTDataModule
from ftlab.data.mixture import MixtureBatches, mixing_probabilities
from ftlab.errors import FTLabError
from tests.conftest import write_jsonl


def test_temperature_and_weights_by_hand() -> None:
    sizes = {"a": 900, "b": 100}
    assert mixing_probabilities(sizes) == pytest.approx({"a": 0.9, "b": 0.1})  # T = 1: by size
    assert mixing_probabilities(sizes, temperature=2.0) == pytest.approx({"a": 0.75, "b": 0.25})  # 30 : 10
    # T = 4: 900^(1/4) = 5.4772, 100^(1/4) = 3.1623 -> 0.63398 : 0.36602
    assert mixing_probabilities(sizes, temperature=4.0) == pytest.approx({"a": 0.63398, "b": 0.36602}, abs=1e-5)
    assert mixing_probabilities(sizes, weights={"a": 1.0, "b": 3.0}) == pytest.approx({"a": 0.25, "b": 0.75})
    with pytest.raises(FTLabError, match="weights name tasks"):
        mixing_probabilities(sizes, weights={"a": 1.0})


def test_sampled_shares_follow_the_probabilities_on_a_fixed_seed() -> None:
    sampler = MixtureBatches([50, 10, 5], [4, 2, 3], [0.5, 0.3, 0.2], num_batches=4000, seed=0)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert batches == list(sampler)  # the same seed and epoch draw the same batches
    tasks = Counter(0 if b[0] < 50 else 1 if b[0] < 60 else 2 for b in batches)
    for task, p in enumerate([0.5, 0.3, 0.2]):
        assert abs(tasks[task] / 4000 - p) < 0.02  # 3 standard errors of a share near 0.5 is 0.024
    # each batch stays inside one task and has that task's batch size; a small task repeats its examples
    assert all(len(b) == {0: 4, 1: 2, 2: 3}[0 if b[0] < 50 else 1 if b[0] < 60 else 2] for b in batches)
    small = Counter(i for b in batches for i in b if i >= 60)
    assert set(small) == {60, 61, 62, 63, 64}


def two_tasks(tmp_path: Path, tokenizer) -> MixtureDataModule:
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"a {i}", "output": f"x {i}"} for i in range(30)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"b {i}", "output": f"y {i}"} for i in range(10)])
    dm = MixtureDataModule(
        tasks={
            "a": SFTDataModule(train=str(a), val_fraction=0.2, batch_size=4, eval_batch_size=4),
            "b": SFTDataModule(train=str(b), val_fraction=0.2, batch_size=2, eval_batch_size=4),
        },
        temperature=2.0,
    )
    dm.tokenizer = tokenizer
    dm.setup("fit")
    return dm


def test_mixture_of_sft_files(tmp_path: Path, tokenizer) -> None:
    dm = two_tasks(tmp_path, tokenizer)
    assert dm.stats["a/train_examples"] == 24 and dm.stats["b/train_examples"] == 8
    assert dm.probabilities == pytest.approx({"a": 24**0.5 / (24**0.5 + 8**0.5), "b": 8**0.5 / (24**0.5 + 8**0.5)})
    assert dm.val_names == ["a", "b"]
    loader = dm.train_dataloader()
    assert len(loader) == 6 + 4  # one pass over both tasks: ceil(24 / 4) + ceil(8 / 2)
    assert {len(batch) for batch in loader} <= {4, 2}
    val = dm.val_dataloader()  # one loader per task, in val_names order: 6 and 2 validation examples
    assert [[len(batch) for batch in loader] for loader in val] == [[4, 2], [2]]


def test_a_selection_split_for_every_task(tmp_path: Path, tokenizer) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"a {i}", "output": f"x {i}"} for i in range(30)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"b {i}", "output": f"y {i}"} for i in range(10)])

    def mixture(**options) -> MixtureDataModule:
        dm = MixtureDataModule(
            tasks={
                "a": SFTDataModule(train=str(a), val_fraction=0.2, batch_size=4),
                "b": SFTDataModule(train=str(b), val_fraction=0.2, batch_size=2),
            },
            **options,
        )
        dm.tokenizer = tokenizer
        dm.setup("fit")
        return dm

    plain, tuned = mixture(), mixture(selection_fraction=0.25)
    scored = mixture(selection_fraction=0.25, evaluate_on="selection")
    ids = lambda examples: [tuple(e.input_ids) for e in examples]  # noqa: E731
    # per task: a 30 rows, 6 validation, round(24 / 4) = 6 selection, 18 train; b 10, 2, 2, 6
    assert [tuned.stats[f"{t}/selection_examples"] for t in "ab"] == [6, 2] and len(tuned.train_set) == 24
    assert ids(tuned.val_set) == ids(plain.val_set)  # the reported split does not move
    selection = [ex for task in tuned.tasks.values() for ex in task.selection_set]
    assert ids(scored.val_set) == ids(selection) and scored.val_names == ["a", "b"]
    with pytest.raises(FTLabError, match="data evaluate_on=selection needs a selection split"):
        MixtureDataModule(tasks={"a": SFTDataModule(train=str(a))}, evaluate_on="selection")


def test_mid_epoch_resume_skips_the_batches_already_trained_on(tmp_path: Path, tokenizer) -> None:
    dm = two_tasks(tmp_path, tokenizer)
    whole = [batch.input_ids for batch in dm.train_dataloader()]
    resumed = dm.train_dataloader()
    resumed.load_state_dict({"epoch": 0, "batches": 3})  # a checkpoint taken after 3 batches of epoch 0
    rest = [batch.input_ids for batch in resumed]
    assert len(rest) == len(whole) - 3 and all(torch.equal(x, y) for x, y in zip(rest, whole[3:], strict=True))
    assert len(list(resumed)) == len(whole)  # only the first pass after the resume skips


def test_several_processes_need_the_distributed_sampler_off(tmp_path: Path, tokenizer) -> None:
    dm = two_tasks(tmp_path, tokenizer)
    dm.trainer = SimpleNamespace(world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=True))
    with pytest.raises(FTLabError, match=r"set trainer\.use_distributed_sampler: false"):
        dm.setup("fit")
    dm.trainer._accelerator_connector.use_distributed_sampler = False
    dm.setup("fit")


def test_tasks_must_share_a_batch_kind(sft_file: Path) -> None:
    with pytest.raises(FTLabError, match="one batch kind"):
        MixtureDataModule(tasks={"a": SFTDataModule(train=str(sft_file)), "b": PreferenceDataModule(train="x.jsonl")})
    with pytest.raises(FTLabError, match="weights or data temperature"):
        MixtureDataModule(tasks={"a": SFTDataModule(train=str(sft_file))}, weights={"a": 1.0}, temperature=2.0)
