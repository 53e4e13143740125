"""ftlab's ModelCheckpoint writes last.ckpt at every epoch's end with `save_top_k: 0` (Lightning's only when training
ends), and the CLI puts it in place of Lightning's where a config asks for last.ckpt only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from ftlab.callbacks import ModelCheckpoint
from ftlab.trainer_config import FTLAB_CHECKPOINT, keep_last_checkpoints


class LastAtEpochStart(pl.Callback):
    """The step of the last.ckpt on disk at each epoch's start (None: no file yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[int | None] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        found = self.path.exists()
        step = torch.load(self.path, map_location="cpu", weights_only=True)["global_step"] if found else None
        self.seen.append(step)


def steps_seen(tmp_path: Path, callback: LightningModelCheckpoint, **trainer: Any) -> list[int | None]:
    probe = LastAtEpochStart(tmp_path / "last.ckpt")
    options = dict(max_epochs=3, limit_train_batches=4, limit_val_batches=2, logger=False, enable_progress_bar=False)
    pl.Trainer(callbacks=[callback, probe], enable_model_summary=False, **{**options, **trainer}).fit(BoringModel())
    return probe.seen


def test_last_only_is_written_at_every_epochs_end(tmp_path: Path) -> None:
    ours = steps_seen(tmp_path / "a", ModelCheckpoint(dirpath=tmp_path / "a", save_last=True, save_top_k=0))
    theirs = steps_seen(tmp_path / "b", LightningModelCheckpoint(dirpath=tmp_path / "b", save_last=True, save_top_k=0))
    assert ours == [None, 4, 8]
    assert theirs == [None, None, None]  # Lightning 2.6: only when training ends
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["last.ckpt"]  # one file, no top-k copies


def test_with_validation_inside_the_epoch_it_saves_after_each_validation(tmp_path: Path) -> None:
    callback = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    assert steps_seen(tmp_path, callback, val_check_interval=2) == [None, 4, 8]  # the last validation: batch 4


def test_every_n_epochs_is_kept_and_the_final_state_is_saved_too(tmp_path: Path) -> None:
    callback = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_epochs=2)
    assert steps_seen(tmp_path, callback, max_epochs=3) == [None, None, 8]
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 12  # the end of training, not epoch 2's


@pytest.mark.parametrize(
    ("init_args", "swapped"),
    [
        ({"save_last": True, "save_top_k": 0}, True),
        ({"save_last": "link", "save_top_k": 0, "every_n_epochs": 2}, True),
        ({"save_last": True, "save_top_k": 1}, False),  # a top-k checkpoint each epoch: last.ckpt with it
        ({"save_last": None, "save_top_k": 0}, False),
        ({"save_last": True, "save_top_k": 0, "every_n_epochs": 0}, False),  # no epoch saves asked for
        ({"save_last": True, "save_top_k": 0, "every_n_train_steps": 5}, False),  # step saves write last.ckpt
        ({"save_last": True, "save_top_k": 0, "train_time_interval": "0:10:00"}, False),
    ],
)
def test_the_cli_swaps_lightnings_only_where_it_would_save_nothing_before_the_end(
    init_args: dict[str, Any], swapped: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    lightning = "lightning.pytorch.callbacks.ModelCheckpoint"
    other = Namespace(class_path="lightning.pytorch.callbacks.LearningRateMonitor", init_args=Namespace())
    trainer = Namespace(callbacks=[Namespace(class_path=lightning, init_args=Namespace(**init_args)), other])
    keep_last_checkpoints(trainer)
    assert trainer.callbacks[0].class_path == (FTLAB_CHECKPOINT if swapped else lightning)
    assert trainer.callbacks[0].init_args == Namespace(**init_args)
    assert trainer.callbacks[1] == other
    said = capsys.readouterr().err
    assert ("writes last.ckpt only when training ends" in said) == swapped
