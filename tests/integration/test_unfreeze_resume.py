"""Gradual unfreezing survives resume: the stage after a restart is the uninterrupted run's stage."""

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ftlab.data import SFTDataModule
from ftlab.methods import GradualUnfreeze
from ftlab.module import FineTuneModule
from ftlab.objectives import SFT


class Probe(pl.Callback):
    """Records, after the schedule ran, how many parameters train at each step."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.seen[trainer.global_step] = sum(p.requires_grad for p in pl_module.model.parameters())


def run(backbone, data: Path, root: Path, steps: int, ckpt: Path | None = None) -> Probe:
    module = FineTuneModule(
        backbone, GradualUnfreeze(every_n_steps=2), SFT(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2)
    )
    probe = Probe()
    trainer = pl.Trainer(
        default_root_dir=root,
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe, ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)],
    )
    dm = SFTDataModule(train=str(data), batch_size=4, max_length=64)
    trainer.fit(module, dm, ckpt_path=ckpt)
    return probe


def test_resume_keeps_the_unfreezing_stage(tiny_llama, sft_file: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    straight = run(tiny_llama, sft_file, tmp_path / "a", steps=7)
    counts = [straight.seen[s] for s in range(7)]
    assert counts[0] == counts[1] < counts[2] == counts[3] < counts[4] == counts[5] < counts[6]
    pl.seed_everything(0)
    run(tiny_llama, sft_file, tmp_path / "b", steps=3)
    resumed = run(tiny_llama, sft_file, tmp_path / "c", steps=7, ckpt=tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert {s: resumed.seen[s] for s in range(3, 7)} == {s: straight.seen[s] for s in range(3, 7)}
