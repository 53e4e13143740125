"""A run stopped by preemption starts no generation pass at its epoch end (its grace period is for the
checkpoint); a run stopped for any other reason is evaluated as usual."""

from __future__ import annotations

from types import SimpleNamespace

from ftlab.callbacks.generation_eval import GenerationEval
from ftlab.callbacks.preemption import Preemption


def test_a_preempted_run_is_not_evaluated() -> None:
    callback = GenerationEval(file="unused.jsonl")
    callback.rows = [{"prompt": "Add.", "reference": "5"}]
    calls: list[object] = []
    callback.evaluate = lambda module: calls.append(module) or ({}, [])  # type: ignore[method-assign]
    preemption = Preemption()
    trainer = SimpleNamespace(
        callbacks=[preemption, callback],
        should_stop=True,
        max_epochs=10,
        current_epoch=0,
        max_steps=-1,
        global_step=3,
        is_global_zero=False,
    )
    preemption.stopped = True
    callback.on_train_epoch_end(trainer, "module")
    assert calls == []
    preemption.stopped = False  # stopped by something else (max_steps, early stopping): the last epoch
    callback.on_train_epoch_end(trainer, "module")
    assert calls == ["module"]
