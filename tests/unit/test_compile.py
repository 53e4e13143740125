"""Regional compilation (inductor on CPU): compiled and eager losses agree step by step; no recompilation after
warm-up with fixed shapes; switches the method cannot take are refused in one sentence."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from ftlab.data import PreferenceDataModule, SFTDataModule
from ftlab.errors import FTLabError
from ftlab.methods import AdapterSequential, Full, LoRA, PrefixTuning, QLoRA
from ftlab.models.anatomy import find_blocks
from ftlab.models.compile import check_speed, compile_options
from ftlab.module import FineTuneModule
from ftlab.objectives import DPO, SFT
from tests.conftest import REPO, quiet_trainer

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/inductor-ftlab")
PAIRS = REPO / "ftlab" / "assets" / "preference_pairs.jsonl"
METHODS = {
    "full": Full,
    "lora": lambda: LoRA(r=2),
    "adapter": lambda: AdapterSequential(reduction_factor=4),
    "prefix": lambda: PrefixTuning(num_virtual_tokens=2),
}


class Losses(pl.Callback):
    """Records each step's loss; with `guard`, any recompilation after the first step raises."""

    def __init__(self, guard: bool = False) -> None:
        self.values: list[float] = []
        self.guard = guard

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))
        if self.guard:
            torch._dynamo.config.error_on_recompile = True


def run(backbone, method, objective, data, root: Path, compile: bool, steps: int = 3, guard: bool = False):
    pl.seed_everything(0)
    module = FineTuneModule(
        backbone, method(), objective(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), compile=compile
    )
    losses = Losses(guard)
    trainer = quiet_trainer(root, steps, limit_val_batches=0, callbacks=[losses])
    try:
        trainer.fit(module, data())
    finally:
        torch._dynamo.config.error_on_recompile = False
    return losses.values, module


def sft_data(packing: bool = False):
    def make():
        rows = REPO / "ftlab" / "assets" / "self_instruct_seed.jsonl"
        return SFTDataModule(train=str(rows), val_fraction=0.1, batch_size=2, max_length=48, packing=packing)

    return make


def dpo_data():
    return PreferenceDataModule(train=str(PAIRS), val_fraction=0.1, batch_size=2, max_length=48)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "dpo"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_compiled_losses_equal_eager(method, objective, tiny_llama, tmp_path) -> None:
    make_objective, data = (SFT, sft_data()) if objective == "sft" else (lambda: DPO(beta=0.1), dpo_data)
    eager, _ = run(tiny_llama, METHODS[method], make_objective, data, tmp_path / "eager", compile=False)
    compiled, module = run(tiny_llama, METHODS[method], make_objective, data, tmp_path / "compiled", compile=True)
    assert len(eager) == len(compiled) == 3
    assert compiled == pytest.approx(eager, abs=1e-4)
    _, blocks = find_blocks(module.model)
    assert all(block._compiled_call_impl is not None for block in blocks)


@pytest.mark.slow
def test_no_recompilation_after_warm_up_with_fixed_shapes(tiny_llama, tmp_path) -> None:
    """Packed rows all have one width: after the first step nothing recompiles (error_on_recompile)."""
    compiled, _ = run(tiny_llama, METHODS["lora"], SFT, sft_data(packing=True), tmp_path, compile=True, steps=4)
    assert len(compiled) == 4 and all(torch.isfinite(torch.tensor(compiled)))


def test_switches_refused_in_one_sentence() -> None:
    assert compile_options(False) is None and compile_options(True) == {}
    assert compile_options({"mode": "max-autotune"}) == {"mode": "max-autotune"}
    with pytest.raises(FTLabError, match="unknown option"):
        compile_options({"fullgarph": True})
    with pytest.raises(FTLabError, match="cannot compile method QLoRA"):
        check_speed(QLoRA(), True, False)
