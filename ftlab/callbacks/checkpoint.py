"""ModelCheckpoint: Lightning's, whose `save_last` also saves when no top-k checkpoint is kept.

Since Lightning 2.6, `ModelCheckpoint(save_last=True, save_top_k=0)` writes last.ckpt at an epoch's end (or a
validation's) only when a top-k checkpoint was saved at the same step, and with `save_top_k=0` none ever is:
the run's only checkpoint is the one written when training ends, and a run killed before that has nothing to
resume. This subclass writes last.ckpt at every save point the callback's triggers name (each epoch's end or
validation, `every_n_epochs`), as `save_last` read before: one file, overwritten, so resuming costs no disk
beyond one checkpoint. Step- and time-triggered saves (`every_n_train_steps`, `train_time_interval`) already
write last.ckpt and are unchanged. With `save_top_k` other than 0 it is Lightning's ModelCheckpoint.

ftlab's configs and `--checkpoint_every_n_steps` use it, and the CLI puts it in place of Lightning's where a
config asks for last.ckpt only (ftlab.trainer_config.keep_last_checkpoints).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    def _last_only(self) -> bool:
        return bool(self.save_last) and self.save_top_k == 0

    def _epoch_due(self, trainer: pl.Trainer) -> bool:
        return self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0

    def _save_last_if_due(self, trainer: pl.Trainer, at_train_epoch_end: bool) -> None:
        """last.ckpt where Lightning's would save a top-k checkpoint: at the train epoch's end or after validation
        (whichever `_should_save_on_train_epoch_end` picks), every `every_n_epochs`, once a step."""
        if not (self._last_only() and self._should_save_on_train_epoch_end(trainer) == at_train_epoch_end):
            return
        if not self._should_skip_saving_checkpoint(trainer) and self._epoch_due(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_due(trainer, at_train_epoch_end=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_if_due(trainer, at_train_epoch_end=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """The final state in last.ckpt, as Lightning's writes it (which it skips once any last.ckpt was saved)."""
        super().on_train_end(trainer, pl_module)
        if self._last_only() and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
