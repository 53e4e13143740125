"""The training order: a function of the data seed, the run seed and the epoch; resumable inside an epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftlab.data import SFTDataModule
from tests.conftest import write_jsonl


def rows_of(batch) -> list[tuple[int, ...]]:
    return [tuple(row) for row in batch.input_ids.tolist()]


def order(tmp: Path, tokenizer, monkeypatch: pytest.MonkeyPatch, run_seed: int, data_seed: int = 0) -> list:
    monkeypatch.setenv("PL_GLOBAL_SEED", str(run_seed))
    rows = [{"instruction": f"Say {i}.", "output": f"number {i}"} for i in range(16)]
    dm = SFTDataModule(train=str(write_jsonl(tmp / "rows.jsonl", rows)), batch_size=4, max_length=32, seed=data_seed)
    dm._tokenizer = tokenizer
    dm.setup("fit")
    return [row for batch in dm.train_dataloader() for row in rows_of(batch)]


def test_the_run_seed_and_the_data_seed_both_change_the_order(tmp_path, tokenizer, monkeypatch) -> None:
    first = order(tmp_path, tokenizer, monkeypatch, run_seed=0)
    assert first == order(tmp_path, tokenizer, monkeypatch, run_seed=0)
    assert len(set(first)) == 16
    assert first != order(tmp_path, tokenizer, monkeypatch, run_seed=1)
    assert first != order(tmp_path, tokenizer, monkeypatch, run_seed=0, data_seed=1)


def test_a_resumed_loader_skips_the_batches_already_trained_on(tmp_path, tokenizer, monkeypatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    rows = [{"instruction": f"Say {i}.", "output": f"number {i}"} for i in range(16)]
    dm = SFTDataModule(train=str(write_jsonl(tmp_path / "rows.jsonl", rows)), batch_size=4, max_length=32)
    dm._tokenizer = tokenizer
    dm.setup("fit")
    full = [rows_of(batch) for batch in dm.train_dataloader()]
    loader = dm.train_dataloader()
    loader.load_state_dict({"epoch": 0, "batches": 3})
    assert [rows_of(batch) for batch in loader] == full[3:]
    assert [rows_of(batch) for batch in loader] == full  # the skip applies to the resumed epoch only
