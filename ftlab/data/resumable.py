"""ResumableLoader: a training DataLoader whose order is a pure function of (seed, epoch), and that
resumes inside an epoch.

Lightning saves a loader's `state_dict()` in checkpoints and calls `load_state_dict()` on resume
(mid-epoch resume needs a stateful loader). The state is the epoch and the number of batches the
training loop has processed in it, read from the trainer (not counted here: Lightning fetches one
batch ahead, so a count of batches handed out would be one too many). On resume the loader reseeds
its generator for that epoch and skips the batches already trained on, so the run sees exactly the
batches an uninterrupted run would. Shuffling draws from the loader's own generator, never from the
global RNG, so creating the iterator does not shift the random stream of dropout or sampling.
Under DDP Lightning swaps in a DistributedSampler, seeded per epoch; the loader sets that epoch itself
before iterating (Lightning sets it only after a resumed loop has created the iterator, which would skip
through epoch 0's order), so skipping holds there too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

Progress = Callable[[], tuple[int, int]]
"""() -> (epoch, batches processed in it) as the training loop sees them."""


class ResumableLoader(DataLoader):
    def __init__(self, *args: Any, seed: int = 0, progress: Progress | None = None, **kwargs: Any) -> None:
        if kwargs.get("shuffle") and kwargs.get("generator") is None and kwargs.get("sampler") is None:
            kwargs["generator"] = torch.Generator()
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.progress = progress
        self._resume: dict[str, int] | None = None

    def _epoch(self) -> int:
        return self.progress()[0] if self.progress is not None else 0

    def __iter__(self) -> Iterator[Any]:
        epoch = self._epoch()
        if self.generator is not None:
            self.generator.manual_seed(self.seed * 1_000_003 + epoch)
        for sampler in (self.sampler, self.batch_sampler):  # Lightning sets a DistributedSampler's epoch only
            if hasattr(sampler, "set_epoch"):  # after a resumed loop's first iter(): the skip must use this epoch
                sampler.set_epoch(epoch)
        skip = 0
        if self._resume is not None and self._resume["epoch"] == epoch:
            skip = self._resume["batches"]
        self._resume = None
        iterator = super().__iter__()
        for _ in range(skip):
            next(iterator, None)
        return iterator

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self.progress() if self.progress is not None else (0, 0)
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
