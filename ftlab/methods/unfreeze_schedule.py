"""UnfreezeSchedule: applies GradualUnfreeze's stage before every training batch.

The stage is computed from the trainer's global step and epoch, never stored, so resuming from a
checkpoint puts the model in the same stage as an uninterrupted run (no re-freezing on resume).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl


class UnfreezeSchedule(pl.Callback):
    def __init__(self, method: Any) -> None:
        self.method = method
        self.stage = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        model = pl_module.model
        total = len(self.method.groups(model))
        stage = self.method.unfrozen(trainer.global_step, trainer.current_epoch, total)
        if stage != self.stage:
            self.method.set_stage(model, stage)
            self.stage = stage
        pl_module.log("unfreeze/groups", float(stage), on_step=True, on_epoch=False, batch_size=len(batch))
