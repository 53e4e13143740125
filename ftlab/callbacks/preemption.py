"""Preemption: SIGUSR1 or SIGTERM saves a checkpoint at the next step boundary and stops cleanly; under a SLURM
batch job, SIGUSR1 then also requeues the job.

A scheduler that preempts a job sends a signal first (SLURM: `--signal=B:USR1@90`; most others: SIGTERM and a
grace period). The handler only sets a flag; after the current optimizer step every rank agrees on it (one
boolean all-reduce per step, only when there are several ranks), saves `<checkpoints>/last.ckpt` and stops; the
run folder gets no DONE marker, so sweeps and users see an unfinished run, and `--ckpt_path last` resumes it
exactly.

SLURM: ftlab's CLI gives the trainer Lightning's SLURMEnvironment with `auto_requeue=False`, so SIGUSR1 is this
callback's (Lightning's own handler would save `hpc_ckpt_N.ckpt` from inside the signal handler, wherever the
loop happens to be, and requeue). When the ranks stopped on SIGUSR1 and the process runs inside a SLURM batch
script (`ENVIRONMENT=BATCH`, which slurmd sets for the batch script and its srun steps, never for salloc or a
bare srun), global rank 0 runs `scontrol requeue JOB` (an array task: `ARRAYJOB_TASK`) in the fit's teardown
(after the checkpoint and the run report), every rank ignores the SIGTERM that SLURM sends the job right after
(measured: ~5 ms after scontrol returns), so the loggers' last writes and the exit finish and the process exits
0 (SLURM's SIGKILL follows only after its KillWait); the requeued job resumes from last.ckpt (slurm/*.sbatch
pass it as `--ckpt_path`). FTLAB_SLURM_REQUEUE=0 never requeues, =1 also requeues outside a batch script (where
SLURM_JOB_ID is set). SIGTERM never requeues: it is SLURM stopping the job (scancel, the time limit, its own
preemption), which decides itself whether the job comes back. If a config names Lightning's SLURMEnvironment
with auto_requeue on, SIGUSR1 stays Lightning's and this callback handles SIGTERM only. A notice that arrives
while `ftlab fit` is still importing or parsing is held (`ftlab.early_signals`) and taken over here at setup:
the fit stops after its first step, as for a notice mid-fit.

Written by hand: Lightning's requeue lives inside its signal handler, which is the part this replaces.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

from ftlab import early_signals, runfolder
from ftlab.errors import FTLabError

log = logging.getLogger("ftlab")

REQUEUE_FLAG = "FTLAB_SLURM_REQUEUE"
Runner = Callable[[list[str]], subprocess.CompletedProcess]


def requeue_command(signum: int | None, environ: Mapping[str, str]) -> list[str] | None:
    """The command that puts this SLURM job back in the queue after a stop on `signum`, or None for no requeue.

    Only SIGUSR1 requeues (the notice `--signal=USR1@N` sends before the time limit), only in a SLURM job, and
    only inside a batch script unless REQUEUE_FLAG says otherwise. An array task is named `ARRAYJOB_TASK`: one
    task's SLURM_JOB_ID can equal the array's job id, and `scontrol requeue` of that requeues every task.
    """
    flag = environ.get(REQUEUE_FLAG, "")
    if flag not in ("", "0", "1"):
        raise FTLabError(f"{REQUEUE_FLAG}={flag!r}: expected 0 (never requeue) or 1 (requeue in any SLURM job)")
    job = environ.get("SLURM_JOB_ID", "")
    array, task = environ.get("SLURM_ARRAY_JOB_ID", ""), environ.get("SLURM_ARRAY_TASK_ID", "")
    if array.isdigit() and task.isdigit():
        job = f"{array}_{task}"
    elif not job.isdigit():
        return None
    if signum != signal.SIGUSR1 or flag == "0":
        return None
    if flag != "1" and environ.get("ENVIRONMENT") != "BATCH":
        return None  # salloc / srun --pty: an interactive shell holds the allocation, there is nothing to requeue
    return ["scontrol", "requeue", job]


def run_scontrol(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


class Preemption(pl.Callback):
    def __init__(self, runner: Runner = run_scontrol) -> None:
        self.received: int | None = None
        self.stopped = False
        self.stop_signal: int | None = None  # the signal the ranks stopped on (SIGUSR1 if any rank got it)
        self.requeued = False
        self._runner = runner
        self._previous: dict[int, Any] = {}
        self._forward: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def _install(self, signum: int) -> None:
        if signum not in self._previous:
            self._previous[signum] = signal.getsignal(signum)
        signal.signal(signum, self._handle)

    def _restore(self, signum: int) -> None:
        if signum in self._previous:
            signal.signal(signum, self._previous.pop(signum))

    @staticmethod
    def _owns_sigusr1(trainer: pl.Trainer) -> bool:
        environment = trainer._accelerator_connector.cluster_environment
        return not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue)

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        requeue_command(None, os.environ)  # a malformed REQUEUE_FLAG fails now, not at the preemption
        self.received, self.stop_signal, self.stopped, self.requeued = None, None, False, False
        self._forward = None
        if self._owns_sigusr1(trainer):
            self._install(signal.SIGUSR1)  # from setup on: a notice during model loading or the sanity check counts
            early = early_signals.release(keep_current=True)  # a notice that came while the command was importing
            self.received = self.received or early
        else:
            self._forward = early_signals.release()  # Lightning's requeue handler gets the notice once installed

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._install(signal.SIGTERM)  # replaces Lightning's, which would stop the loop with an exception
        if self._forward is not None:
            os.kill(os.getpid(), self._forward)
            self._forward = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._restore(signal.SIGTERM)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        accumulate = trainer.accumulate_grad_batches
        if accumulate > 1 and (idx + 1) % accumulate and idx + 1 != trainer.num_training_batches:
            return  # inside gradient accumulation: stop at the next optimizer step, not halfway through one
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        usr1 = self.received == signal.SIGUSR1  # the requeue notice, on any rank: some ranks may have seen none
        if trainer.world_size > 1:
            usr1 = trainer.strategy.reduce_boolean_decision(usr1, all=False)
        self.stop_signal = int(signal.SIGUSR1) if usr1 else int(self.received or signal.SIGTERM)
        path = checkpoint_dir(trainer) / "last.ckpt"
        trainer.save_checkpoint(path)
        for callback in trainer.callbacks:  # this is the run's last checkpoint: a ModelCheckpoint
            if isinstance(callback, ModelCheckpoint):  # must not add an end-of-epoch "last-v1.ckpt" that a
                callback.last_model_path = callback._last_checkpoint_saved = str(path)  # resume would pick
                callback._last_global_step_saved = trainer.global_step
        self.stopped = True
        trainer.should_stop = True
        log.warning("ftlab: signal %s: saved %s at step %d and stopped", self.stop_signal, path, trainer.global_step)

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        for signum in list(self._previous):
            self._restore(signum)

    def teardown(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        self._restore(signal.SIGUSR1)  # after Lightning's signal teardown, which put back what it found: ours
        command = requeue_command(self.stop_signal, os.environ) if self.stopped else None
        if command is None:
            return
        # SLURM sends every process of the job SIGTERM right after the requeue; the checkpoint is saved and
        # what is left is the exit, so every rank lets it finish (SIGKILL follows after SLURM's KillWait)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if trainer.is_global_zero:
            self.requeued = requeue(command, self._runner)


def requeue(command: list[str], runner: Runner) -> bool:
    """Runs `scontrol requeue JOB`; a failure is a warning, since the run is saved either way."""
    try:
        done = runner(command)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("ftlab: %s failed (%s); resubmit the job to resume from last.ckpt", " ".join(command), err)
        return False
    if done.returncode != 0:
        why = (done.stderr or done.stdout or "").strip()
        log.warning(
            "ftlab: %s failed (exit %d: %s); was the job submitted with --no-requeue? resubmit it to resume",
            " ".join(command),
            done.returncode,
            why,
        )
        return False
    log.warning("ftlab: %s: the job goes back in the queue and resumes from last.ckpt", " ".join(command))
    return True


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """Where the run's checkpoints go: the ModelCheckpoint's folder, else `<run>/checkpoints`."""
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / runfolder.CHECKPOINTS


def preempted(trainer: pl.Trainer) -> bool:
    return any(isinstance(c, Preemption) and c.stopped for c in trainer.callbacks)
