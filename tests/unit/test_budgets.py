"""Data budgets: `limit` rows (first N, or a seeded sample) and `shots` examples per class."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ftlab.data import ClassificationDataModule, SFTDataModule
from ftlab.errors import FTLabError
from tests.conftest import write_jsonl


def _outputs(dm: SFTDataModule, tokenizer) -> list[str]:
    return [tokenizer.decode([t for t in ex.labels if t >= 0], skip_special_tokens=True) for ex in dm.train_set]


@pytest.mark.parametrize("n", [1, 7, 24])
def test_limit_keeps_exactly_the_first_n_rows(n: int, sft_file: Path, tokenizer) -> None:
    dm = SFTDataModule(train=str(sft_file), limit=n)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    assert len(dm.train_set) == n
    assert _outputs(dm, tokenizer) == [f"word {i}" for i in range(n)]


def test_limit_across_files_and_a_seeded_sample(tmp_path: Path, sft_rows: list[dict], tokenizer) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", sft_rows[:10])
    second = write_jsonl(tmp_path / "b.jsonl", sft_rows[10:])
    dm = SFTDataModule(train=[str(first), str(second)], limit=13)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    assert _outputs(dm, tokenizer) == [f"word {i}" for i in range(13)]  # all of a, then b's first 3

    drawn = []
    for seed in (0, 0, 1):
        dm = SFTDataModule(train=[str(first), str(second)], limit=13, limit_random=True, seed=seed)
        dm.tokenizer = tokenizer
        dm.setup("fit")
        drawn.append(_outputs(dm, tokenizer))
    assert len(drawn[0]) == 13 and drawn[0] == drawn[1] != drawn[2]  # fixed by the seed
    numbers = [int(text.split()[1]) for text in drawn[0]]
    assert numbers == sorted(numbers) and numbers != list(range(13))  # a sample, kept in file order
    with pytest.raises(FTLabError, match="limit"):
        SFTDataModule(train=str(first), limit=0)


@pytest.mark.parametrize("limit_random", [False, True])
def test_budgets_share_one_validation_split(limit_random: bool, tmp_path: Path, tokenizer) -> None:
    rows = [{"instruction": f"say {i}", "output": f"word {i}"} for i in range(40)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    sets = {}
    for n in (5, 12, 100):
        dm = SFTDataModule(train=str(path), val_fraction=0.25, limit=n, limit_random=limit_random, seed=3)
        dm.tokenizer = tokenizer
        dm.setup("fit")
        val = [ex.input_ids for ex in dm.val_set]
        sets[n] = (val, [ex.input_ids for ex in dm.train_set])
    assert len(sets[5][0]) == 10 and sets[5][0] == sets[12][0] == sets[100][0]  # 25 % of all 40 rows, every budget
    assert [len(sets[n][1]) for n in (5, 12, 100)] == [5, 12, 30]  # the budget counts what the split left
    val_ids = {tuple(v) for v in sets[5][0]}
    assert not val_ids & {tuple(t) for t in sets[100][1]}
    if not limit_random:  # the first rows of the training split: a smaller budget is a prefix of a larger one
        assert sets[5][1] == sets[12][1][:5] == sets[100][1][:5]
    else:  # a seeded sample, in file order
        order = [ex for ex in sets[100][1]]
        assert all(ex in order for ex in sets[12][1]) and sets[12][1] != sets[100][1][:12]
        positions = [order.index(ex) for ex in sets[12][1]]
        assert positions == sorted(positions)


def test_shots_keep_n_per_class_after_the_validation_split(tmp_path: Path, tokenizer) -> None:
    rows = [{"text": f"text number {i}", "label": ["a", "b", "c"][i % 3]} for i in range(60)]
    path = write_jsonl(tmp_path / "cls.jsonl", rows)
    picks = []
    for seed in (0, 0, 1):
        dm = ClassificationDataModule(train=str(path), val_fraction=0.25, shots=4, seed=seed)
        dm.tokenizer = tokenizer
        dm.setup("fit")
        assert Counter(ex.label for ex in dm.train_set) == {0: 4, 1: 4, 2: 4}
        assert len(dm.val_set) == 15  # the validation set does not depend on shots
        picks.append([ex.input_ids for ex in dm.train_set])
    assert picks[0] == picks[1] != picks[2]
    dm = ClassificationDataModule(train=str(path), shots=25)  # 20 per class exist: all kept, counted
    dm.tokenizer = tokenizer
    dm.setup("fit")
    assert len(dm.train_set) == 60 and dm.stats["shots_short_classes"] == 3


def test_limit_is_a_key_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ftlab.cli import FTLabCLI
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    cli = FTLabCLI(
        args=[
            "--config",
            "experiments/quickstart.yaml",
            "--data.init_args.limit=32",
            "--data.init_args.limit_random=true",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    assert cli.datamodule.limit == 32 and cli.datamodule.limit_random
