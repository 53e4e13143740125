"""Exact resume and preemption, through the real command line.

For each cell: an uninterrupted run of 7 optimizer steps; a second run SIGKILLed after step 3 (in a
subprocess: no cleanup, no final checkpoint; what is on disk is the atomically written last.ckpt of
step 2 or 3); then `--ckpt_path last` in the same folder. Every loss the resumed run logs equals the
uninterrupted run's at the same step, bit for bit (float repr): weights, optimizer, LR schedule, RNG
streams (dropout, sampling), the position inside the epoch and the unfreezing stage are all restored,
and everything here runs single-threaded on CPU in the same order.

A real SIGUSR1 or SIGTERM sent to a run makes it save last.ckpt at the next step boundary and exit 0
without DONE; `--ckpt_path last` then finishes it. In a SLURM batch job, SIGUSR1 also runs `scontrol requeue`
(here a stand-in that, like SLURM, sends the process SIGTERM at once), and the process still exits 0.
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

BASE = REPO / "tests" / "integration" / "configs" / "resume_base.yaml"
SFT = [
    "--data=ftlab.data.SFTDataModule",
    "--data.train=ftlab/assets/self_instruct_seed.jsonl",
    "--data.limit=20",
    "--data.val_fraction=0.2",
    "--data.batch_size=4",
    "--data.max_length=96",
]
PAIRS = [
    "--data=ftlab.data.PreferenceDataModule",
    "--data.train=ftlab/assets/preference_pairs.jsonl",
    "--data.limit=20",
    "--data.val_fraction=0.2",
    "--data.batch_size=4",
    "--data.max_length=64",
]
PROMPTS = [
    "--data=ftlab.data.PromptDataModule",
    "--data.train=ftlab/assets/synthetic_prompts.jsonl",
    "--data.limit=20",
    "--data.val_fraction=0.2",
    "--data.batch_size=4",
]
LORA = ["--model.method=ftlab.methods.LoRA", "--model.method.r=4", "--model.method.dropout=0.1"]
CELLS = {
    "sft_lora": [*LORA, "--model.objective=ftlab.objectives.SFT", *SFT],
    "dpo_lora": [*LORA, "--model.objective=ftlab.objectives.DPO", *PAIRS],
    "grpo_lora": [
        *LORA,
        "--config=experiments/objectives/grpo.yaml",
        "--model.objective.num_generations=2",
        "--model.objective.max_new_tokens=6",
        "--model.objective.updates_per_batch=2",
        *PROMPTS,
    ],
    # max_epochs instead of max_steps (the quickstart's): the schedule's length comes from the epoch count
    "sft_lora_epochs": [
        *LORA,
        "--model.objective=ftlab.objectives.SFT",
        *SFT,
        "--trainer.max_steps=-1",
        "--trainer.max_epochs=2",
    ],
    "sft_gradual": [
        "--model.method=ftlab.methods.GradualUnfreeze",
        "--model.method.every_n_steps=2",
        "--model.objective=ftlab.objectives.SFT",
        *SFT,
    ],
}


def args(cell: str, root: Path, tape: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(BASE),
        *CELLS[cell],
        f"--trainer.default_root_dir={root}",
        "--trainer.callbacks+=tests.integration.resume_helpers.LossTape",
        f"--trainer.callbacks.path={tape}",
        *extra,
    ]


def tape(path: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, path.read_text().splitlines())}


def killed_run(
    cell: str, root: Path, tape_path: Path, extra: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "ftlab", *args(cell, root, tape_path, *extra)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


CSV = ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=logs"]


def csv_losses(root: Path) -> dict[int, str]:
    """train/loss by step from the run's logs/metrics.csv (as written: the float's text)."""
    rows = list(csv.DictReader((root / "logs" / "metrics.csv").open(newline="")))
    return {int(r["step"]): r["train/loss"] for r in rows if r.get("train/loss")}


def run_cell(cell: str, tmp: Path) -> tuple[dict[int, float], dict[int, float], Path]:
    os.chdir(REPO)
    FTLabCLI(args=args(cell, tmp / "straight", tmp / "straight.jsonl", *CSV))
    kill = ["--trainer.callbacks+=tests.integration.resume_helpers.KillAt", "--trainer.callbacks.step=3"]
    result = killed_run(cell, tmp / "broken", tmp / "broken.jsonl", [*kill, *CSV])
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert not (tmp / "broken" / "DONE").exists()
    FTLabCLI(args=args(cell, tmp / "broken", tmp / "resumed.jsonl", *CSV, "--ckpt_path=last"))
    # the CSV log holds every step once, as the uninterrupted run's: the rows before the checkpoint kept
    assert csv_losses(tmp / "broken") == csv_losses(tmp / "straight")
    return tape(tmp / "straight.jsonl"), tape(tmp / "resumed.jsonl"), tmp / "broken"


@pytest.mark.parametrize(
    "cell",
    [
        "sft_lora",
        "sft_lora_epochs",
        pytest.param("dpo_lora", marks=pytest.mark.slow),
        pytest.param("grpo_lora", marks=pytest.mark.slow),
        pytest.param("sft_gradual", marks=pytest.mark.slow),
    ],
)
def test_killed_and_resumed_run_logs_the_same_losses(cell: str, tmp_path: Path) -> None:
    straight, resumed, root = run_cell(cell, tmp_path)
    first = min(resumed)
    assert 3 <= first <= 4, sorted(resumed)  # killed after step 3 (GRPO: 2 updates a batch, so after 4)
    assert sorted(resumed) == [step for step in sorted(straight) if step >= first]
    for step in resumed:
        assert resumed[step] == straight[step], (step, resumed[step], straight[step])
    assert (root / "DONE").exists() and json.loads((root / "summary.json").read_text())["steps"] == max(straight)


@pytest.mark.parametrize(
    "signum",
    [signal.SIGUSR1, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],  # each: a subprocess and a resume
    ids=["sigusr1", "sigterm"],
)
def test_a_signal_saves_a_checkpoint_stops_cleanly_and_the_run_resumes(signum: int, tmp_path: Path) -> None:
    callbacks = [  # checkpoints at epoch ends only, as the shipped configs: the signal comes mid-epoch
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"save_last": True, "save_top_k": 0},
        },
        {
            "class_path": "tests.integration.resume_helpers.LossTape",
            "init_args": {"path": str(tmp_path / "tape.jsonl")},
        },
        {"class_path": "tests.integration.resume_helpers.SignalAt", "init_args": {"step": 2, "signum": int(signum)}},
    ]
    signal_at = [f"--trainer.callbacks={json.dumps(callbacks)}", "--trainer.max_steps=6"]
    result = killed_run("sft_lora", tmp_path / "run", tmp_path / "tape.jsonl", signal_at)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"ftlab: signal {int(signum)}: saved" in result.stderr  # ftlab's handler, not Lightning's
    root = tmp_path / "run"
    assert not (root / "DONE").exists() and not (root / "summary.json").exists()
    checkpoint = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2 and checkpoint["state_dict"]
    # the only checkpoint: no end-of-epoch last-v1.ckpt after it, which `--ckpt_path last` would pick and skip
    # the rest of the epoch
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"]
    assert max(tape(tmp_path / "tape.jsonl")) == 2  # stopped at the next step boundary
    os.chdir(REPO)
    FTLabCLI(args=args("sft_lora", root, tmp_path / "resumed.jsonl", "--trainer.max_steps=6", "--ckpt_path=last"))
    assert sorted(tape(tmp_path / "resumed.jsonl")) == [3, 4, 5, 6]  # went on from the step it stopped at
    assert (root / "DONE").exists() and json.loads((root / "summary.json").read_text())["steps"] == 6


def test_a_sigusr1_in_a_slurm_batch_job_requeues_it_and_exits_0(tmp_path: Path) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # SLURM sends the job's processes SIGTERM right after a requeue (~5 ms)
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nkill -TERM $PPID\n')
    scontrol.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "FTLAB_SLURM"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_ID="4242", ENVIRONMENT="BATCH")
    signal_at = ["--trainer.callbacks+=tests.integration.resume_helpers.SignalAt", "--trainer.callbacks.step=2"]
    result = killed_run("sft_lora", tmp_path / "run", tmp_path / "tape.jsonl", signal_at, env)
    assert result.returncode == 0, result.stderr[-2000:]  # the SIGTERM after the requeue did not kill it
    assert calls.read_text() == "requeue 4242\n"
    assert "ftlab: scontrol requeue 4242: the job goes back in the queue" in result.stderr
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2 and not (tmp_path / "run" / "DONE").exists()
    assert not list((tmp_path / "run").glob("hpc_ckpt_*"))


NOTICE_WHILE_IMPORTING = """
import os, signal, sys
from ftlab import early_signals, entry
hold = early_signals.hold
def hold_then_notice():
    hold()
    os.kill(os.getpid(), signal.SIGUSR1)  # the requeue notice, before torch or Lightning is imported
early_signals.hold = hold_then_notice
entry.main(sys.argv[1:])
"""


def test_a_requeue_notice_during_the_imports_is_kept_for_the_fit(tmp_path: Path) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "FTLAB_SLURM"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_ID="4242", ENVIRONMENT="BATCH", PYTHONPATH=str(REPO))
    root = tmp_path / "run"
    command = [sys.executable, "-c", NOTICE_WHILE_IMPORTING, *args("sft_lora", root, tmp_path / "tape.jsonl")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]  # the default action of SIGUSR1 would have ended it
    assert calls.read_text() == "requeue 4242\n" and not (root / "DONE").exists()
    checkpoint = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 1 and max(tape(tmp_path / "tape.jsonl")) == 1  # stopped after step 1
