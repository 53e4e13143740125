"""RandomState: the random streams in checkpoints, so a resumed run draws what an uninterrupted one would.

Lightning restores weights, optimizer, schedules and loop counters but not the random number
generators. This callback saves Python's, NumPy's and torch's (CPU and CUDA) RNG states of every rank with
every checkpoint and puts them back just before the first training batch after a resume (anything that
draws between loading and training, e.g. a sanity check, can no longer shift the stream). Validation
runs on a forked stream: it may sample (GRPO, PPO), and must not change what training draws next, so
a run that validates after step k and a run resumed from step k continue identically.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch


def capture() -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": [*internal, version, gauss_next],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "gauss": [int(has_gauss), gauss]},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[-2], tuple(python[:-2]), python[-1]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["gauss"][0], numpy["gauss"][1]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomState(pl.Callback):
    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._outside_validation: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """Every rank's streams (each rank draws its own dropout masks and samples): gathered to all ranks,
        as Lightning asks every rank for the checkpoint's state and rank 0 writes it."""
        state = capture()
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return {"rng": state}
        ranks: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(ranks, state)
        return {"rng": state, "ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks")
        rank = (
            torch.distributed.get_rank()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 0
        )
        # a rank of the saving run restores its own streams; a run with more ranks than that starts the extra
        # ones from rank 0's (it cannot continue what did not exist)
        self._pending = ranks[rank] if ranks and rank < len(ranks) else state_dict.get("rng")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            restore(self._pending)
            self._pending = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._outside_validation = capture()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self._outside_validation is not None:
            restore(self._outside_validation)
            self._outside_validation = None
