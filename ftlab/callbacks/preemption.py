"""Preemption: SIGUSR1 or SIGTERM saves a checkpoint at the next step boundary and stops cleanly.

A scheduler that preempts a job sends a signal first (SLURM: `--signal=B:USR1@90`; most others:
SIGTERM and a grace period). The handler only sets a flag; after the current optimizer step every
rank agrees on it (one boolean all-reduce per step, only when there are several ranks), saves
`<checkpoints>/last.ckpt` and stops; the run folder gets no DONE marker, so sweeps and users see an
unfinished run, and `--ckpt_path last` resumes it exactly. Under SLURM with Lightning's auto-requeue
(SLURMEnvironment), SIGUSR1 is Lightning's: it saves an HPC checkpoint and requeues the job, and
the requeued job resumes from it; this callback then handles SIGTERM only.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

from ftlab import runfolder

log = logging.getLogger("ftlab")


class Preemption(pl.Callback):
    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def _signals(self, trainer: pl.Trainer) -> list[int]:
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            return [signal.SIGTERM]
        return [signal.SIGUSR1, signal.SIGTERM]

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.received, self.stopped = None, False
        for signum in self._signals(trainer):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        accumulate = trainer.accumulate_grad_batches
        if accumulate > 1 and (idx + 1) % accumulate and idx + 1 != trainer.num_training_batches:
            return  # inside gradient accumulation: stop at the next optimizer step, not halfway through one
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        path = checkpoint_dir(trainer) / "last.ckpt"
        trainer.save_checkpoint(path)
        self.stopped = True
        trainer.should_stop = True
        log.warning("ftlab: signal %s: saved %s at step %d and stopped", self.received, path, trainer.global_step)


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """Where the run's checkpoints go: the ModelCheckpoint's folder, else `<run>/checkpoints`."""
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / runfolder.CHECKPOINTS


def preempted(trainer: pl.Trainer) -> bool:
    return any(isinstance(c, Preemption) and c.stopped for c in trainer.callbacks)
