"""Runs fits under a multi-process strategy as a plain script (Lightning's DDP launcher re-runs the
command for each rank, which must not be pytest): `python distributed_cells.py SPEC.json OUT_DIR`.

SPEC is a list of cells {name, strategy: ddp|ddp_unused|fsdp|single, method, objective, steps,
batch_size, data}. For each cell every rank writes `OUT/<name>.rank<r>.json` (its logged metrics,
the checksum and the largest change of its trainable weights since training started, or the refusal
message) and rank 0 writes `OUT/<name>.safetensors` (the gathered trainable weights).
The pytest side (test_distributed.py) builds the backbone cache first so no two ranks race on it.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from safetensors.torch import save_file

from ftlab.errors import FTLabError
from ftlab.module import FineTuneModule

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


def method(name: str) -> Any:
    from ftlab import methods

    return {
        "full": methods.Full,
        "freeze": lambda: methods.Freeze(last_blocks=1),
        "gradual_unfreeze": lambda: methods.GradualUnfreeze(every_n_steps=1),
        "lora": lambda: methods.LoRA(r=4, dropout=0.0),
        "qlora": lambda: methods.QLoRA(r=4, dropout=0.0),
        "adapter_sequential": lambda: methods.AdapterSequential(size=8),
        "adapter_parallel": lambda: methods.AdapterParallel(size=8),
        "adapter_hybrid": lambda: methods.AdapterHybrid(size=8),
        "prefix": lambda: methods.PrefixTuning(num_virtual_tokens=4),
        "prompt": lambda: methods.PromptTuning(num_virtual_tokens=4, init="vocab"),
        "feature_extraction": methods.FeatureExtraction,
        "reft": lambda: methods.LoReFT(r=2, layers=[0], first=4),
    }[name]()


def even_share(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **_: Any) -> list[float]:
    """A reward that varies between samples of an untrained model: the share of even token ids."""
    return [sum(i % 2 == 0 for i in ids) / max(len(ids), 1) for ids in completion_ids]


def objective(name: str) -> Any:
    from ftlab import objectives
    from ftlab.rewards import FunctionReward

    reward = [FunctionReward(even_share)]
    return {
        "sft": objectives.SFT,
        "dpo": lambda: objectives.DPO(beta=0.1),
        "reward": objectives.Reward,
        "classification": lambda: objectives.Classification(num_labels=2, dropout=0.0),
        "grpo": lambda: objectives.GRPO(rewards=reward, num_generations=2, max_new_tokens=4, updates_per_batch=2),
        "ppo": lambda: objectives.PPO(rewards=reward, max_new_tokens=4, epochs=2, minibatch_size=2),
    }[name]()


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
    root = out / cell["name"]
    regularizers = []
    if cell.get("ewc"):  # old data: the cell's own SFT rows; a strength that makes the penalty matter
        from ftlab.data import SFTDataModule
        from ftlab.regularizers import EWC

        old = SFTDataModule(train=cell["data"], max_length=64)
        regularizers = [EWC(data=old, strength=cell["ewc"], samples=4, cache=False)]
    module = FineTuneModule(
        TinyBackbone(config=LLAMA, vocab_size=512),
        method(cell["method"]),
        objective(cell["objective"]),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        regularizers=regularizers,
    )
    devices = 1 if cell["strategy"] == "single" else 2
    start = StartWeights()
    trainer = pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=devices,
        strategy=strategy(cell["strategy"]),
        max_steps=cell["steps"],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        callbacks=[start],
    )
    try:
        trainer.fit(module, datamodule(cell))
        report: dict[str, Any] = {
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
            "steps": trainer.global_step,
        }
        weights = module.trainable_state_dict(gather=True)
        report["checksum"] = sum(float(v.double().abs().sum()) for v in weights.values())
        # the largest change of a trainable weight since training started (every weight is gathered whole)
        report["moved"] = max(float((v - start.weights[k]).abs().max()) for k, v in weights.items())
        if trainer.is_global_zero:
            save_file({k: v.contiguous().cpu() for k, v in weights.items()}, out / f"{cell['name']}.safetensors")
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
