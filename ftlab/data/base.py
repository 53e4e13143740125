"""The datamodule base: files in, tokenized examples out, batches of one declared kind.

Subclasses turn rows into examples (`build`) and examples into a batch (`collate`); this class
reads the files, splits off validation, applies a row budget, and reports what was dropped or cut.
The tokenizer is the run's own (the module's, so data and model never disagree) unless one is named.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from ftlab.data.files import load_rows
from ftlab.data.resumable import ResumableLoader
from ftlab.errors import FTLabError

log = logging.getLogger("ftlab")


def run_seed() -> int:
    """The run's seed (`seed_everything`, also what Lightning's DistributedSampler uses), so that a seed axis
    varies the training order as well as the initialisation; the torch seed when none was set."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed() % 2**31))


def _as_list(spec: str | list[str] | None) -> list[str]:
    if spec is None:
        return []
    return [spec] if isinstance(spec, str) else list(spec)


class FineTuneDataModule(pl.LightningDataModule):
    """Base class of ftlab datamodules.

    Args:
        train: Training data: a local file (json, jsonl, csv, tsv, parquet, optionally .gz), a hub
            dataset `name[:split]`, or a list of them.
        val: Validation data, in the same forms; optional.
        val_fraction: Share of the training rows held out for validation when `val` is not given.
        batch_size: Examples per training batch (per device).
        eval_batch_size: Examples per validation batch; defaults to batch_size.
        max_length: Longest sequence in tokens; longer rows are truncated and counted.
        limit: A data budget: use only `limit` training rows, the first ones of the train files in
            order (the default), or with `limit_random` a sample drawn with `seed` from all of them
            (kept in file order). With `val_fraction`, the validation rows are drawn from all the
            training rows first and the budget counts the training examples left after that split, so
            the validation set is the same at every budget (a study's budget axis compares like with
            like); otherwise rows are counted as read, before filtering, and only those are read.
        limit_random: Draw the `limit` rows at random (seeded) instead of taking the first ones.
        seed: Seed of the validation split, the selection split and a random `limit`.
        selection_fraction: Share of the training rows (all of them, before `limit`) held out as a selection
            split for choosing hyper-parameters, drawn after the validation split: the validation rows are
            the same with or without it, and never seen while tuning.
        evaluate_on: `val` (the default) or `selection`: the split the validation loop runs on (logged under
            `val/`). A study's tuning trials score on `selection`; its reported runs on `val`.
        num_workers: DataLoader worker processes.
        tokenizer: A tokenizer name or folder; defaults to the run's backbone tokenizer.
        pad_to_multiple_of: Pad each batch to a multiple of this many tokens (length buckets: with
            `model.compile`, each distinct width may compile once more); off by default.
    """

    batch_type: ClassVar[type]

    def __init__(
        self,
        train: str | list[str],
        val: str | list[str] | None = None,
        val_fraction: float = 0.0,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_length: int = 512,
        limit: int | None = None,
        limit_random: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        tokenizer: str | None = None,
        pad_to_multiple_of: int | None = None,
        selection_fraction: float = 0.0,
        evaluate_on: str = "val",
    ) -> None:
        super().__init__()
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise FTLabError(f"data pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}")
        self.pad_to_multiple_of = pad_to_multiple_of
        if not 0.0 <= val_fraction < 1.0:
            raise FTLabError(f"data val_fraction must be in [0, 1), got {val_fraction}")
        if not 0.0 <= selection_fraction < 1.0:
            raise FTLabError(f"data selection_fraction must be in [0, 1), got {selection_fraction}")
        if evaluate_on not in ("val", "selection"):
            raise FTLabError(f"data evaluate_on must be val or selection, got {evaluate_on!r}")
        if evaluate_on == "selection" and selection_fraction == 0.0:
            raise FTLabError("data evaluate_on=selection needs a selection split: set data selection_fraction")
        if max_length < 2:
            raise FTLabError(f"data max_length must be at least 2 tokens, got {max_length}")
        self.train_specs = _as_list(train)
        if not self.train_specs:
            raise FTLabError("data train names no file or dataset")
        self.val_specs = _as_list(val)
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.max_length = max_length
        if limit is not None and limit < 1:
            raise FTLabError(f"data limit must be at least 1 row, got {limit}")
        self.limit = limit
        self.limit_random = limit_random
        self.seed = seed
        self.num_workers = num_workers
        self.tokenizer_name = tokenizer
        self.selection_fraction = selection_fraction
        self.evaluate_on = evaluate_on
        self.selection_set: list[Any] = []
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.train_set: list[Any] | None = None
        self.val_set: list[Any] = []
        self.stats: dict[str, int] = {}

    def batch_width(self, longest: int) -> int:
        """The padded width of a batch whose longest row has `longest` tokens: rounded up to a multiple of
        `pad_to_multiple_of` (length buckets: a compiled model sees few distinct shapes), at most max_length
        unless a row is longer."""
        if not self.pad_to_multiple_of:
            return longest
        rounded = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return max(longest, min(rounded, self.max_length))

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            if self.tokenizer_name:
                from ftlab.models.tokenizers import load_tokenizer

                self._tokenizer = load_tokenizer(self.tokenizer_name)
            elif self.trainer is not None and getattr(self.trainer.lightning_module, "tokenizer", None) is not None:
                self._tokenizer = self.trainer.lightning_module.tokenizer
            else:
                raise FTLabError("the datamodule has no tokenizer: name one, or attach it to a run's module")
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tok: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tok

    # --- what subclasses provide
    def build(self, rows: Dataset, source: str) -> list[Any]:
        """Turn rows into examples, counting into `self.stats`; errors name `source` and the row."""
        raise NotImplementedError

    def finalize(self, examples: list[Any], train: bool) -> list[Any]:
        """A last pass over the examples of a split (e.g. packing)."""
        return examples

    def collate(self, examples: list[Any]) -> Any:
        raise NotImplementedError

    @staticmethod
    def numbered(examples: list[Any]) -> list[Any]:
        """Examples that carry an `index` get their position in the split: the key of per-example
        caches (features, reference log-probs), stable across epochs."""
        for i, example in enumerate(examples):
            if hasattr(example, "index"):
                example.index = i
        return examples

    # --- Lightning hooks
    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def _random_rows(self, specs: list[str], limit: int) -> list[tuple[str, Dataset]]:
        """`limit` rows drawn with `seed` from all files together, each file's kept in file order."""
        tables = [(spec, load_rows(spec)) for spec in specs]
        total = sum(len(rows) for _, rows in tables)
        picked = set(random.Random(self.seed).sample(range(total), min(limit, total)))
        out, start = [], 0
        for spec, rows in tables:
            mine = [i - start for i in range(start, start + len(rows)) if i in picked]
            start += len(rows)
            if mine:
                out.append((spec, rows.select(mine)))
        return out

    def _read(self, specs: list[str], limit: int | None) -> list[Any]:
        examples: list[Any] = []
        if limit is not None and self.limit_random:
            return [ex for spec, rows in self._random_rows(specs, limit) for ex in self._built(rows, spec)]
        for spec in specs:
            rows = load_rows(spec)
            if limit is not None:  # the first rows, across files in order
                rows = rows.select(range(min(limit - len(examples), len(rows))))
            examples += self._built(rows, spec)
            if limit is not None and len(examples) >= limit:
                break
        return examples

    def _budget(self, train: list[Any]) -> list[Any]:
        """The `limit` training examples kept after the validation split: the first ones, or a seeded
        sample kept in order."""
        assert self.limit is not None
        if not self.limit_random:
            return train[: self.limit]
        picked = sorted(random.Random(self.seed).sample(range(len(train)), min(self.limit, len(train))))
        return [train[i] for i in picked]

    def _built(self, rows: Dataset, spec: str) -> list[Any]:
        built = self.build(rows, spec)
        if not built:
            raise FTLabError(
                f"data file {spec} has no usable row left after filtering "
                f"({self.describe_stats()}; max_length={self.max_length})"
            )
        return built

    def describe_stats(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.stats.items())

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        split_first = self.limit is not None and not self.val_specs and self.val_fraction > 0
        train = self._read(self.train_specs, None if split_first else self.limit)
        val = self._read(self.val_specs, None) if self.val_specs else []
        if not val and self.val_fraction > 0:
            order = list(range(len(train)))
            random.Random(self.seed).shuffle(order)
            n_val = max(1, round(len(train) * self.val_fraction))
            if n_val >= len(train):
                raise FTLabError(f"data val_fraction={self.val_fraction} leaves no training row of {len(train)}")
            held = set(order[:n_val])
            val = [ex for i, ex in enumerate(train) if i in held]
            train = [ex for i, ex in enumerate(train) if i not in held]
        train, selection = self._split_selection(train)
        if split_first:
            train = self._budget(train)
        self.train_set = self.numbered(self.finalize(train, train=True))
        self.val_set = self.numbered(self.finalize(val, train=False))
        if selection:
            self.selection_set = self.numbered(self.finalize(selection, train=False))
            self.stats["selection_examples"] = len(self.selection_set)
            if self.evaluate_on == "selection":
                self.val_set = self.selection_set
        self.stats["train_examples"] = len(self.train_set)
        self.stats["val_examples"] = len(self.val_set)
        log.info("data: %s", self.describe_stats())

    def _split_selection(self, train: list[Any]) -> tuple[list[Any], list[Any]]:
        """(training examples, selection examples): `selection_fraction` of the rows left after the validation
        split, drawn with its own seeded order so that the validation split does not move."""
        if self.selection_fraction == 0.0:
            return train, []
        order = list(range(len(train)))
        random.Random(f"selection-{self.seed}").shuffle(order)
        n = max(1, round(len(train) * self.selection_fraction))
        if n >= len(train):
            fraction = self.selection_fraction
            raise FTLabError(f"data selection_fraction={fraction} leaves no training row of {len(train)}")
        held = set(order[:n])
        return [ex for i, ex in enumerate(train) if i not in held], [ex for i, ex in enumerate(train) if i in held]

    def train_dataloader(self) -> DataLoader:
        # order = f(data seed, run seed, epoch), and resumable inside an epoch (see ftlab.data.resumable)
        return ResumableLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            drop_last=False,
            seed=self.seed * 1_000_003 + run_seed(),
            progress=self.progress,
        )

    def progress(self) -> tuple[int, int]:
        """(epoch, batches processed in it) of the training loop; (0, 0) outside a fit."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 0
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_set:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.eval_batch_size,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )
