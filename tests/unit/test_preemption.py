"""Preemption stops at an optimizer-step boundary: never halfway through gradient accumulation."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

from ftlab.callbacks.preemption import Preemption, preempted


def fake_trainer(tmp: Path, accumulate: int) -> SimpleNamespace:
    saved: list[Path] = []
    return SimpleNamespace(
        accumulate_grad_batches=accumulate,
        num_training_batches=10,
        world_size=1,
        callbacks=[],
        default_root_dir=str(tmp),
        global_step=0,
        should_stop=False,
        saved=saved,
        save_checkpoint=saved.append,
    )


def test_waits_for_the_accumulation_boundary(tmp_path: Path) -> None:
    callback = Preemption()
    trainer = fake_trainer(tmp_path, accumulate=4)
    trainer.callbacks.append(callback)
    callback.received = signal.SIGTERM
    for idx in range(3):  # batches 0-2 only accumulate
        callback.on_train_batch_end(trainer, None, None, None, idx)
        assert not trainer.saved and not trainer.should_stop
    callback.on_train_batch_end(trainer, None, None, None, 3)  # the 4th batch steps the optimizer
    assert trainer.saved == [tmp_path / "checkpoints" / "last.ckpt"] and trainer.should_stop
    assert preempted(trainer)


def test_no_signal_no_stop(tmp_path: Path) -> None:
    callback = Preemption()
    trainer = fake_trainer(tmp_path, accumulate=1)
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.saved and not trainer.should_stop and not preempted(trainer)
