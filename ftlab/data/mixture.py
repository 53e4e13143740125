"""Multi-task mixtures: several datamodules of one batch kind, sampled by weight or by temperature.

Each training batch comes from one task, drawn with probability p_i: given `weights`, p_i = w_i / Σw;
otherwise p_i ∝ n_i^(1/T) over the tasks' training example counts n_i (T = 1: proportional to size,
as if the files were concatenated; T -> ∞: uniform; mT5 and Arivazhagan et al. (2019) use T = 3-5 to
lift small tasks). A task's batch is collated by its own datamodule with its own batch_size, from a
stream that walks a seeded permutation of its examples and reshuffles when it runs out (a small task
repeats, a large one is subsampled). An epoch is `batches_per_epoch` batches, by default as many as one
pass over every task would take. The draw is fixed by `seed`, the epoch and the global rank, so the
loader resumes inside an epoch as every ftlab training loader does (`ftlab.data.resumable`: its state is
the epoch and the batches processed in it; a resume redraws that epoch and skips them). Under several
processes set `trainer.use_distributed_sampler: false` (every rank draws its own stream; Lightning cannot
put a DistributedSampler into this batch sampler): setup refuses the run otherwise.

Validation keeps each task's own validation set: one dataloader per task with validation examples, in
`val_names` order; FineTuneModule logs `val/<task>/<name>` per task and `val/<name>` as the unweighted
mean over tasks. Examples carrying an `index` are renumbered across the mixture, so per-example caches
(DPO reference log-probs) stay unique.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ftlab.data.base import FineTuneDataModule, run_seed
from ftlab.data.resumable import ResumableLoader
from ftlab.errors import FTLabError

log = logging.getLogger("ftlab")


def mixing_probabilities(
    sizes: dict[str, int], weights: dict[str, float] | None = None, temperature: float | None = None
) -> dict[str, float]:
    """p_i = w_i / Σw with weights, else p_i = n_i^(1/T) / Σ_j n_j^(1/T) (T = 1 when not given).

    >>> mixing_probabilities({"a": 900, "b": 100}, temperature=2.0)  # 30 : 10
    {'a': 0.75, 'b': 0.25}
    """
    if weights is not None:
        if set(weights) != set(sizes):
            raise FTLabError(f"data weights name tasks {sorted(weights)} but the tasks are {sorted(sizes)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise FTLabError(f"data weights must be non-negative with a positive sum, got {weights}")
        raw = {k: float(weights[k]) for k in sizes}
    else:
        t = 1.0 if temperature is None else temperature
        raw = {k: n ** (1.0 / t) for k, n in sizes.items()}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


class TaggedExamples(Dataset):
    """Examples of several tasks in one list, served as (task position, example)."""

    def __init__(self, tasks: list[list[Any]]) -> None:
        self.items = [(t, ex) for t, examples in enumerate(tasks) for ex in examples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return self.items[i]


class MixtureBatches:
    """Batches of dataset indices, each from one task drawn with its probability (a `batch_sampler`)."""

    def __init__(
        self, sizes: list[int], batch_sizes: list[int], probs: list[float], num_batches: int, seed: int
    ) -> None:
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.sizes, self.batch_sizes, self.num_batches, self.seed = sizes, batch_sizes, num_batches, seed
        self.probs = torch.tensor(probs, dtype=torch.float64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch: the draw depends on (seed, epoch), so a resume redraws it."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        tasks = torch.multinomial(self.probs, self.num_batches, replacement=True, generator=g).tolist()
        streams: list[list[int]] = [[] for _ in self.sizes]
        for t in tasks:
            while len(streams[t]) < self.batch_sizes[t]:  # a fresh permutation when the task runs out
                streams[t] += torch.randperm(self.sizes[t], generator=g).tolist()
            batch, streams[t] = streams[t][: self.batch_sizes[t]], streams[t][self.batch_sizes[t] :]
            yield [self.offsets[t] + i for i in batch]


class MixtureDataModule(FineTuneDataModule):
    """Several datamodules of one batch kind trained together (multi-task), each validated on its own.

    Args:
        tasks: Task name -> datamodule (any ftlab datamodule; all of one batch kind). Each keeps its
            own files, fields, batch sizes, limit and validation split.
        weights: Task name -> sampling weight (normalised); instead of temperature.
        temperature: p_i ∝ n_i^(1/T) over training example counts; default 1 (proportional to size).
        batches_per_epoch: Training batches per epoch; default: one pass over every task's examples.
        seed: Seed of the task draw and the per-task shuffles.
        num_workers: DataLoader worker processes.
        selection_fraction: When above 0, every task holds out this share of its training rows as its selection
            split (see FineTuneDataModule), in place of the task's own setting.
        evaluate_on: `val` or `selection`, for every task: the split each task's validation loop runs on.
    """

    def __init__(
        self,
        tasks: dict[str, FineTuneDataModule],
        weights: dict[str, float] | None = None,
        temperature: float | None = None,
        batches_per_epoch: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        selection_fraction: float = 0.0,
        evaluate_on: str = "val",
    ) -> None:
        if not tasks:
            raise FTLabError("data tasks names no datamodule to mix")
        super().__init__(
            train=list(tasks),
            seed=seed,
            num_workers=num_workers,
            selection_fraction=selection_fraction,
            evaluate_on=evaluate_on,
        )
        if weights is not None and temperature is not None:
            raise FTLabError("set data weights or data temperature, not both")
        if temperature is not None and temperature <= 0:
            raise FTLabError(f"data temperature must be positive, got {temperature}")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise FTLabError(f"data batches_per_epoch must be at least 1, got {batches_per_epoch}")
        kinds = {name: getattr(dm, "batch_type", None) for name, dm in tasks.items()}
        if len(set(kinds.values())) != 1:
            found = ", ".join(f"{k}: {getattr(v, '__name__', v)}" for k, v in kinds.items())
            raise FTLabError(f"data tasks must all yield one batch kind ({found})")
        packing = {name: bool(getattr(dm, "packing", False)) for name, dm in tasks.items()}
        if len(set(packing.values())) != 1:
            raise FTLabError(f"data tasks must all pack or all not pack (packing: {packing})")
        self.tasks = dict(tasks)
        for task in self.tasks.values():  # a study tunes the mixture: each task scores on its own selection split
            if selection_fraction > 0:
                task.selection_fraction, task.evaluate_on = selection_fraction, evaluate_on
        self.weights = weights
        self.temperature = temperature
        self.batches_per_epoch = batches_per_epoch
        self.batch_type = next(iter(kinds.values()))
        self.packing = next(iter(packing.values()))
        self.probabilities: dict[str, float] = {}
        self.val_names: list[str] = []
        """Tasks with a validation set, in the order of the per-task validation dataloaders."""

    @property
    def num_labels(self) -> int | None:
        """The tasks' common label count (classification), None for other kinds."""
        counts = {name: getattr(dm, "num_labels", None) for name, dm in self.tasks.items()}
        if len(set(counts.values())) != 1:
            raise FTLabError(f"data tasks have different label counts ({counts}); one head cannot serve them")
        return next(iter(counts.values()))

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        distributed = trainer is not None and trainer.world_size > 1
        if stage == "fit" and distributed and trainer._accelerator_connector.use_distributed_sampler:
            raise FTLabError(
                "data MixtureDataModule draws each rank's batches itself and Lightning cannot shard them: "
                "set trainer.use_distributed_sampler: false"
            )
        if self.train_set is not None:
            return
        for name, task in self.tasks.items():
            if task._tokenizer is None and task.tokenizer_name is None:
                task.tokenizer = self.tokenizer  # the run's tokenizer, as a datamodule of its own would get
            task.setup(stage)
            self.stats.update({f"{name}/{k}": v for k, v in task.stats.items()})
        self.train_set = self.numbered([ex for task in self.tasks.values() for ex in task.train_set])
        self.val_set = self.numbered([ex for task in self.tasks.values() for ex in task.val_set])
        self.val_names = [name for name, task in self.tasks.items() if task.val_set]
        sizes = {name: len(task.train_set) for name, task in self.tasks.items()}
        self.probabilities = mixing_probabilities(sizes, self.weights, self.temperature)
        self.stats["train_examples"] = len(self.train_set)
        self.stats["val_examples"] = len(self.val_set)
        shares = ", ".join(f"{k}={p:.3f}" for k, p in self.probabilities.items())
        log.info("data mixture: %s; sampling probabilities %s", self.describe_stats(), shares)

    def collate(self, examples: list[Any]) -> Any:
        """Untagged examples (e.g. a reference-cache pass): tasks of one batch kind collate alike."""
        return next(iter(self.tasks.values())).collate(examples)

    def _collate_tagged(self, items: list[tuple[int, Any]]) -> Any:
        task = list(self.tasks.values())[items[0][0]]  # a batch never crosses tasks
        return task.collate([ex for _, ex in items])

    def train_dataloader(self) -> DataLoader:
        tasks = list(self.tasks.values())
        sizes = [len(t.train_set) for t in tasks]
        batch_sizes = [t.batch_size for t in tasks]
        num = self.batches_per_epoch or sum(math.ceil(n / b) for n, b in zip(sizes, batch_sizes, strict=True))
        rank = self.trainer.global_rank if self.trainer is not None else 0
        probs = [self.probabilities[name] for name in self.tasks]
        sampler = MixtureBatches(sizes, batch_sizes, probs, num, (self.seed + rank) * 1_000_003 + run_seed())
        dataset = TaggedExamples([t.train_set for t in tasks])
        return ResumableLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self._collate_tagged,
            num_workers=self.num_workers,
            seed=self.seed,
            progress=self.progress,
        )

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per task with validation examples, in `val_names` order (the module's dataloader_idx)."""
        return [task.val_dataloader() for task in self.tasks.values() if task.val_set]
