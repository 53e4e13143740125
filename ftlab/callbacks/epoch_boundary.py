"""EpochBoundary: a checkpoint taken at an epoch's end resumes where the uninterrupted run went on.

Lightning (2.6) resumes two kinds of checkpoint from an epoch's boundary wrongly:

- saved in `on_train_batch_end` of the epoch's last batch (ModelCheckpoint's `every_n_train_steps` or
  `train_time_interval` landing there, a preemption that cannot wait, every step of a one-batch epoch): the
  epoch is marked done without its validation or its end hooks, and the run goes on one epoch too far (the
  shuffled order of the wrong epoch from then on);
- saved in `on_train_epoch_end` (ModelCheckpoint's end-of-epoch save whenever validation runs once an epoch):
  the next epoch's loader is created before the epoch counter is restored, so the next epoch is trained in the
  previous epoch's order.

Where the run validates right after that epoch's last batch (the shipped configs: every epoch), both are
rewritten on load into states that Lightning's loops resume exactly: the first into "the last batch done, a
validation started with none of its batches run" (validation, the epoch's end hooks, then the next epoch, as the
uninterrupted run does), the second into "after the epoch's validation" (its end hooks run again, then the next
epoch in its own order). Only the loop counters change; weights, optimizer, schedules and random streams are
restored as saved. A checkpoint saved anywhere else (mid-epoch, after validation) is left as it is: Lightning
resumes those exactly. Not covered: a boundary where the run does not validate (`limit_val_batches: 0`,
`check_val_every_n_epoch` skipping that epoch, validation only inside the epoch): both rewritten states end the
resumed epoch through that validation, so those checkpoints are left to Lightning's resume as it is.

Written by hand: the fix belongs in Lightning's loops; this adapts the checkpoint to them, and the resume
tests (tests/integration/test_resume_boundary.py) pin it for every save point.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger("ftlab")

EPOCHS = "epoch_progress"
BATCHES = "epoch_loop.batch_progress"
VALIDATION = "epoch_loop.val_loop.batch_progress"
STEPPED = ("epoch_loop.state_dict", "_batches_that_stepped")


def rewrite(fit_loop: dict[str, Any], validates_at_end: Callable[[int], bool]) -> str | None:
    """Rewrites a fit loop's saved state taken at an epoch's boundary (see the module text) in place; returns
    what it did in a few words, or None where it leaves the state as it is. `validates_at_end(epoch)`: whether
    the run validates after that epoch's last batch. Both rewritten states stop the resumed epoch only through
    that validation, so where there is none the state is left to Lightning (which then resumes an epoch-end
    save in the previous epoch's order, a last-batch save an epoch too far)."""
    if not all(key in fit_loop for key in (EPOCHS, BATCHES, VALIDATION)):
        return None
    epochs, batches, validation = fit_loop[EPOCHS], fit_loop[BATCHES], fit_loop[VALIDATION]
    e = epochs["total"]
    if not validates_at_end(e["completed"]):
        return None
    if e["ready"] == e["started"] == e["processed"] == e["completed"] + 1:
        # on_train_epoch_end: back to the state of the same epoch after its validation (its end hooks and
        # counters not yet run), which Lightning resumes exactly; its logging step is then one ahead, as
        # Lightning counts it there
        for part in ("total", "current"):
            epochs[part]["processed"] = epochs[part]["completed"]
        state = fit_loop.setdefault(STEPPED[0], {})
        state[STEPPED[1]] = state.get(STEPPED[1], 1) - 1
        return "saved at an epoch's end: the epoch's end runs again"
    b = batches["total"]
    last_batch_end = (
        e["ready"] == e["started"] == e["processed"] + 1 == e["completed"] + 1
        and batches.get("is_last_batch")
        and b["ready"] == b["started"] == b["processed"] == b["completed"] + 1
        and all(validation[part]["started"] == validation[part]["completed"] for part in ("total", "current"))
    )
    if not last_batch_end:
        return None
    # on_train_batch_end of the epoch's last batch: mark the batch done and a validation run as started with
    # none of its batches run, which Lightning resumes by running the validation (where one is due), then the
    # epoch's end
    for part in ("total", "current"):
        batches[part]["completed"] = batches[part]["processed"]
    done = validation["total"]["completed"]  # this epoch's validation batches ("current": the last run's)
    validation["total"].update(ready=done + 1, started=done + 1, processed=done)
    validation["current"].update(ready=1, started=1, processed=0, completed=0)
    return "saved after an epoch's last batch: its validation and end run first"


def validates_at_end(trainer: pl.Trainer, epoch: int) -> bool:
    """Whether the run validates right after epoch `epoch`'s last batch, and only there: validation on, every
    `check_val_every_n_epoch` epochs with this one among them, `val_check_interval` 1.0, no time interval."""
    every = trainer.check_val_every_n_epoch
    return (
        trainer.enable_validation
        and every is not None
        and (epoch + 1) % every == 0
        and isinstance(trainer.val_check_interval, float)
        and trainer.val_check_interval == 1.0
        and getattr(trainer, "_val_check_time_interval", None) is None
    )


class EpochBoundary(pl.Callback):
    """Applies `rewrite` to the checkpoint a fit resumes from (before Lightning restores its loops)."""

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        fit_loop = checkpoint.get("loops", {}).get("fit_loop")
        if isinstance(fit_loop, dict) and trainer.state.fn == "fit":
            done = rewrite(fit_loop, lambda epoch: validates_at_end(trainer, epoch))
            if done:
                log.info("ftlab: resuming from step %s, %s", checkpoint.get("global_step"), done)
