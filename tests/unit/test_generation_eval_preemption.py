"""Generation eval at the end of fit: a run stopped by preemption starts no generation pass (its grace
period is for the checkpoint), a run stopped for any other reason is evaluated as usual, and the answers
go to the run folder and to W&B."""

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


def test_answers_go_to_the_run_folder_and_a_wandb_table(tmp_path, monkeypatch) -> None:
    import json

    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    callback = GenerationEval(file="unused.jsonl")
    callback.rows = [{"prompt": "Add 2 and 3.", "reference": "5", "gsm8k": None}]
    table = [{**callback.rows[0], "answer": "5"}]
    callback.evaluate = lambda module: ({"exact_match": 1.0}, table)  # type: ignore[method-assign]
    wandb = WandbLogger(offline=True, save_dir=str(tmp_path))
    tables: list[dict] = []
    monkeypatch.setattr(wandb, "log_table", lambda **kw: tables.append(kw))
    logged: list[tuple] = []
    module = SimpleNamespace(log=lambda name, value, **kw: logged.append((name, value)))
    trainer = SimpleNamespace(
        callbacks=[callback],
        should_stop=True,
        max_epochs=-1,
        current_epoch=2,
        max_steps=9,
        global_step=9,
        is_global_zero=True,
        default_root_dir=str(tmp_path),
        loggers=[wandb],
    )
    callback.on_train_epoch_end(trainer, module)
    assert logged == [("gen/exact_match", 1.0)]
    assert tables == [
        {"key": "gen/samples", "columns": ["prompt", "reference", "answer"], "data": [["Add 2 and 3.", "5", "5"]]}
    ]
    rows = [json.loads(line) for line in (tmp_path / "gen_eval.jsonl").read_text().splitlines()]
    assert rows == [{"step": 9, "epoch": 2, "prompt": "Add 2 and 3.", "reference": "5", "gsm8k": None, "answer": "5"}]
