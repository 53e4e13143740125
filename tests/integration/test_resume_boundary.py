"""Exact resume from checkpoints taken at an epoch's boundary, through the real command line.

The quickstart's config (its shuffled order is a function of the epoch, WarmupCosine, validation every epoch)
with a tiny model on 24 rows: 18 train rows in batches of 4, so 5 batches an epoch. Each cell is killed (SIGKILL,
or a preemption signal) after the checkpoint named in its comment, resumed with `--ckpt_path last`, and compared
with an uninterrupted run: every train loss and every validation loss (with its step and epoch) in metrics.csv
equal, as written. Before ftlab.callbacks.epoch_boundary, a checkpoint after an epoch's last batch resumed an
epoch too far, one at the epoch's end trained the next epoch in the previous epoch's order; before
ftlab.callbacks.checkpoint, the quickstart's ModelCheckpoint wrote no last.ckpt before training ended.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftlab.cli import FTLabCLI
from tests.conftest import REPO

KILL = "tests.integration.resume_helpers.KillAt"
SIGNAL = "tests.integration.resume_helpers.SignalAt"
SIGTERM = f"--trainer.callbacks.signum={int(signal.SIGTERM)}"
ONE_STEP = "--checkpoint_every_n_steps=1"
# cell: (options, the callback that interrupts the run, its step, the step of the checkpoint it resumes from)
CELLS = {
    # the quickstart's ModelCheckpoint: last.ckpt at each epoch's end, after validation (on_train_epoch_end)
    "epoch_end": (["--trainer.max_epochs=4"], KILL, 12, 10),
    "epoch_end_max_steps": (["--trainer.max_epochs=-1", "--trainer.max_steps=20"], KILL, 12, 10),
    "epoch_end_no_validation": (["--trainer.max_epochs=4", "--data.init_args.val_fraction=0"], KILL, 14, 12),
    # every_n_train_steps on an epoch's last batch, before its validation (on_train_batch_end)
    "last_batch": (["--trainer.max_epochs=4", "--checkpoint_every_n_steps=5"], KILL, 7, 5),
    "last_batch_max_steps": (["--trainer.max_steps=20", "--checkpoint_every_n_steps=10"], KILL, 12, 10),
    # one batch an epoch: every step is an epoch's last
    # (checkpoints save after the other callbacks: the kill after step 3 comes before step 3's save)
    "one_batch_epochs": (["--trainer.max_epochs=6", "--data.init_args.batch_size=18", ONE_STEP], KILL, 3, 2),
    # a preemption notice on an epoch's last batch saves there and stops
    "sigusr1_last_batch": (["--trainer.max_epochs=4"], SIGNAL, 5, 5),
    "sigterm_last_batch": (["--trainer.max_epochs=4", SIGTERM], SIGNAL, 5, 5),
}


def quickstart(tmp: Path) -> list[str]:
    rows = [{"instruction": f"Say {i}.", "output": f"number {i} " * 3} for i in range(24)]
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    config |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
    argv = ["fit", "--config", "experiments/quickstart.yaml", "--config", "experiments/methods/full.yaml"]
    argv += [f"--data.init_args.train={data}", "--data.init_args.batch_size=4", "--data.init_args.val_fraction=0.25"]
    argv += ["--data.init_args.max_length=64", f"--model.backbone.init_args.config={json.dumps(config)}"]
    argv += ["--model.backbone.init_args.vocab_size=512", "--trainer.log_every_n_steps=1"]
    return [*argv, "--trainer.enable_model_summary=false"]


def logged(root: Path) -> tuple[dict[int, str], dict[tuple[str, str], str]]:
    """metrics.csv as written: train/loss by step, val/loss by (step, epoch)."""
    rows = list(csv.DictReader((root / "logs" / "metrics.csv").open(newline="")))
    train = {int(r["step"]): r["train/loss"] for r in rows if r.get("train/loss")}
    return train, {(r["step"], r["epoch"]): r["val/loss"] for r in rows if r.get("val/loss")}


@pytest.mark.parametrize(
    "cell",
    [
        "epoch_end",
        "last_batch",
        *(pytest.param(c, marks=pytest.mark.slow) for c in CELLS if c not in ("epoch_end", "last_batch")),
    ],
)
def test_a_checkpoint_at_an_epochs_boundary_resumes_exactly(cell: str, tmp_path: Path) -> None:
    options, interrupt, at, saved_at = CELLS[cell]
    argv = [*quickstart(tmp_path), *(o for o in options if "callbacks.signum" not in o)]
    stop = [f"--trainer.callbacks+={interrupt}", f"--trainer.callbacks.step={at}"]
    stop += [o for o in options if "callbacks.signum" in o]
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    stopped = subprocess.run(
        [sys.executable, "-m", "ftlab", *argv, f"--trainer.default_root_dir={run}", *stop],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert stopped.returncode == (-signal.SIGKILL if interrupt == KILL else 0), stopped.stderr[-2000:]
    assert not (run / "DONE").exists()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == saved_at
    os.chdir(REPO)
    FTLabCLI(args=[*argv, f"--trainer.default_root_dir={run}", "--ckpt_path=last"])
    FTLabCLI(args=[*argv, f"--trainer.default_root_dir={tmp_path / 'straight'}"])
    resumed, straight = logged(run), logged(tmp_path / "straight")
    assert resumed[0] == straight[0]  # every step's train loss, as written
    assert resumed[1] == straight[1]  # every validation: its step, epoch and loss
    assert len(straight[0]) == json.loads((run / "summary.json").read_text())["steps"]
