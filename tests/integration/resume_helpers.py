"""Callbacks the resume tests add on the command line: a tape of per-step losses, and a hard kill."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class LossTape(pl.Callback):
    """Appends `{"step": s, "loss": l}` per optimizer step to a JSON-lines file (exact float repr)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": trainer.global_step, "loss": float(loss)}) + "\n")


class KillAt(pl.Callback):
    """SIGKILLs its own process after the given optimizer step (no cleanup, like a node failure)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt(pl.Callback):
    """Sends its own process a signal after the given optimizer step (a scheduler's preemption notice)."""

    def __init__(self, step: int, signum: int = int(signal.SIGUSR1)) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class DiskFullAt(pl.Callback):
    """From the given optimizer step on, every file save fails as on a full disk (ENOSPC), as `torch.save` would."""

    def __init__(self, step: int) -> None:
        self.step = step
        self._save: Any = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        if trainer.global_step >= self.step and self._save is None:
            import torch

            self._save = torch.save

            def full(*args: Any, **kwargs: Any) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            torch.save = full

    def teardown(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if self._save is not None:
            import torch

            torch.save, self._save = self._save, None

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")


class RaiseAtFitStart(pl.Callback):
    """Fails a fit after its checkpoint was read, before training starts (as a fault in a later setup step)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        raise RuntimeError("setup failed on purpose")


def no_reward(prompts: list[str], completions: list[str], **_: Any) -> None:
    """A reward function with a common bug: it forgets to return its scores."""
    [len(c) for c in completions]
