"""Runs fits under a multi-process strategy as a plain script (Lightning's DDP launcher re-runs the
command for each rank, which must not be pytest): `python distributed_cells.py SPEC.json OUT_DIR`.

SPEC is a list of cells {name, strategy: ddp|ddp_unused|fsdp|single, method, objective, steps,
batch_size, data} with optional keys: `ewc` (EWC's strength, old data the cell's own rows), `ewc_text`
(online EWC's old data, a text file, instead; `gamma`, and `previous`: the run folder whose Fisher it
carries, as if the backbone were that run's, though it is the same tiny model), `dropout` (LoRA's), `checkpoint` (a
ModelCheckpoint, so that `ckpt_path="last"` resolves), `signal_at` (rank 0 alone sends itself
SIGUSR1 after that optimizer step: ftlab's Preemption saves last.ckpt and stops every rank), `root` (the
run folder's name, default the cell's: a resumed cell names the stopped cell's) and `ckpt_path`.
For each cell every rank writes `OUT/<name>.rank<r>.json` (its logged metrics, train/loss after every
optimizer step, the checksum and the largest change of its trainable weights since training started, or
the refusal message) and rank 0 writes `OUT/<name>.safetensors` (the gathered trainable weights at the end),
`OUT/<name>.start.safetensors` (at train start: after a restore, the checkpoint's) and, with a regularizer,
`OUT/<name>.regularizers.safetensors` (its anchors and Fisher, gathered).
The pytest side (test_distributed.py) builds the backbone cache first so no two ranks race on it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import save_file

from ftlab import distributed
from ftlab.errors import FTLabError
from ftlab.module import FineTuneModule
from tests.catalogue import METHODS, OBJECTIVES

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


def method(name: str, dropout: float = 0.0) -> Any:
    return METHODS[name](dropout=dropout) if name == "lora" else METHODS[name]()


def objective(name: str) -> Any:
    return OBJECTIVES[name]()


def datamodule(cell: dict[str, Any]) -> pl.LightningDataModule:
    from ftlab import data

    kind, size = cell["objective"], cell["batch_size"]
    common = {"train": cell["data"], "batch_size": size, "max_length": 64, "val_fraction": 0.0}
    if kind == "sft":
        return data.SFTDataModule(**common)
    if kind in ("dpo", "reward"):
        return data.PreferenceDataModule(**common)
    if kind == "classification":
        return data.ClassificationDataModule(**common)
    return data.PromptDataModule(**common)


def strategy(name: str) -> Any:
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    if name == "ddp":
        return DDPStrategy(process_group_backend="gloo")
    if name == "ddp_unused":
        return DDPStrategy(process_group_backend="gloo", find_unused_parameters=True)
    if name == "fsdp":
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False)
    return "auto"


class StartWeights(pl.Callback):
    """The trainable weights as training starts, gathered whole (under FSDP a collective, run on every rank)."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: FineTuneModule) -> None:
        self.weights = {k: v.detach().clone() for k, v in pl_module.trainable_state_dict(gather=True).items()}


class Tape(pl.Callback):
    """train/loss as this rank logged it after every optimizer step ({step: loss}); with `signal_at`, rank 0
    alone sends itself SIGUSR1 after that step (a preemption notice that only one process got)."""

    def __init__(self, signal_at: int | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.signal_at = signal_at

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.losses[trainer.global_step] = float(loss)
        if trainer.global_step == self.signal_at and trainer.is_global_zero:
            os.kill(os.getpid(), signal.SIGUSR1)


def regularizers(cell: dict[str, Any]) -> list[Any]:
    """EWC (`ewc`: its strength) on the cell's own SFT rows, or online EWC on a text file (`ewc_text`: task A of
    a chain, which writes ewc_fisher.safetensors); never cached, so every run estimates its own Fisher."""
    from ftlab.data import SFTDataModule
    from ftlab.regularizers import EWC

    if cell.get("ewc_text"):
        gamma = cell.get("gamma", 1.0)
        return [EWC(cell["ewc_text"], cell["ewc"], samples=4, max_length=32, online=True, gamma=gamma, cache=False)]
    if cell.get("ewc"):  # a strength that makes the penalty matter
        old = SFTDataModule(train=cell["data"], max_length=64)
        return [EWC(data=old, strength=cell["ewc"], samples=4, cache=False)]
    return []


def save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path)


def run_cli(cell: dict[str, Any], out: Path) -> dict[str, Any]:
    """A cell given as command-line arguments: `python -m ftlab fit <args>` in this process."""
    from ftlab.cli import FTLabCLI

    try:
        cli = FTLabCLI(args=["fit", *cell["args"], f"--trainer.default_root_dir={out / cell['name']}"])
    except FTLabError as err:
        return {"refused": str(err)}
    trainer = cli.trainer
    return {"steps": trainer.global_step, "strategy": type(trainer.strategy).__name__, "world_size": trainer.world_size}


def run_cell(cell: dict[str, Any], out: Path) -> dict[str, Any]:
    """Fit one cell; returns (and writes) what this rank saw."""
    from ftlab.models import TinyBackbone

    if "args" in cell:
        report = run_cli(cell, out)
        (out / f"{cell['name']}.rank{os.environ.get('LOCAL_RANK', 0)}.json").write_text(json.dumps(report))
        return report
    pl.seed_everything(0)
    root = out / cell.get("root", cell["name"])
    backbone = TinyBackbone(config=LLAMA, vocab_size=512)
    if cell.get("previous"):  # online EWC reads the previous run's Fisher from the folder the backbone names
        backbone.run = str(out / cell["previous"])  # type: ignore[attr-defined]  # as ftlab.chain.FromRun does
    module = FineTuneModule(
        backbone,
        method(cell["method"], cell.get("dropout", 0.0)),
        objective(cell["objective"]),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        regularizers=regularizers(cell),
    )
    devices = 1 if cell["strategy"] == "single" else 2
    start, tape = StartWeights(), Tape(cell.get("signal_at"))
    # a ModelCheckpoint that saves nothing itself: `ckpt_path="last"` then finds the last.ckpt that ftlab's
    # Preemption wrote. With save_last it would add last-v1.ckpt at train end, which Lightning marks as the
    # end of the epoch (a resume from it skips the rest of that epoch), and "last" would pick it, as newer
    saving = [ModelCheckpoint(save_top_k=0)] if cell.get("checkpoint") else []
    trainer = pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=devices,
        strategy=strategy(cell["strategy"]),
        max_steps=cell["steps"],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(saving),
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        callbacks=[start, tape, *saving],
    )
    try:
        trainer.fit(module, datamodule(cell), ckpt_path=cell.get("ckpt_path"))
        report: dict[str, Any] = {
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
            "steps": trainer.global_step,
            "losses": tape.losses,
        }
        weights = module.trainable_state_dict(gather=True)
        report["checksum"] = sum(float(v.double().abs().sum()) for v in weights.values())
        # the largest change of a trainable weight since training started (every weight is gathered whole)
        report["moved"] = max(float((v - start.weights[k]).abs().max()) for k, v in weights.items())
        # the regularizers' anchors and Fisher, whole (a collective under FSDP)
        kept = {k: distributed.full(v) for k, v in module.regularizers.state_dict().items()}
        if trainer.is_global_zero:
            save(weights, out / f"{cell['name']}.safetensors")
            save(start.weights, out / f"{cell['name']}.start.safetensors")
            if kept:
                save(kept, out / f"{cell['name']}.regularizers.safetensors")
    except FTLabError as err:
        report = {"refused": str(err)}
    except Exception as err:  # recorded for the matrix; the equivalence tests then fail on the missing weights
        traceback.print_exc()
        report = {"error": f"{type(err).__name__}: {err}"[:500]}
    rank = int(os.environ.get("LOCAL_RANK", 0))
    (out / f"{cell['name']}.rank{rank}.json").write_text(json.dumps(report))
    return report


def main() -> None:
    cells = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for cell in cells:
        run_cell(cell, out)


if __name__ == "__main__":
    main()
