"""Exact resume of the configs researchers run: the quickstart as shipped, and the shipped studies' cells.

The quickstart (max_epochs 15, WarmupCosine, checkpoints at epoch ends) gets SIGTERM in the middle of its second
epoch: it saves last.ckpt at the step boundary and stops; `--ckpt_path last` finishes it. Its final trainable
weights equal an uninterrupted run's bit for bit, and so does every logged loss.

Each distinct method (and DPO with a method that switches itself off, a frozen copy and soft prompts, and a task
mixture) of the tiny studies, with the cell's exact arguments from the study file, is SIGKILLed after step 4 with
`--checkpoint_every_n_steps 1` (the shipped configs checkpoint at epoch ends, and a study cell runs less than one
epoch) and resumed: every later loss equals the uninterrupted cell's. All in the slow set: 2 + 3 processes each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ftlab.cli import FTLabCLI
from ftlab.runfolder import load_weights
from ftlab.sweep.compat import Composer, incompatibility
from ftlab.sweep.manifest import cell_argv
from ftlab.sweep.study import expand, load_study
from tests.conftest import REPO
from tests.integration.test_resume import csv_losses, tape

TAPE = "--trainer.callbacks+=tests.integration.resume_helpers.LossTape"


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "ftlab", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200
    )


@pytest.mark.slow
def test_the_quickstart_as_shipped_resumes_exactly_after_sigterm(tmp_path: Path) -> None:
    quickstart = ["fit", "--config", "experiments/quickstart.yaml"]
    os.chdir(REPO)
    FTLabCLI(args=[*quickstart, f"--trainer.default_root_dir={tmp_path / 'straight'}"])
    stop = ["--trainer.callbacks+=tests.integration.resume_helpers.SignalAt", "--trainer.callbacks.step=25"]
    stop += [f"--trainer.callbacks.signum={int(signal.SIGTERM)}"]
    stopped = _run([*quickstart, f"--trainer.default_root_dir={tmp_path / 'run'}", *stop])
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert not (tmp_path / "run" / "DONE").exists()
    os.chdir(REPO)
    FTLabCLI(args=[*quickstart, f"--trainer.default_root_dir={tmp_path / 'run'}", "--ckpt_path=last"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == json.loads((tmp_path / "straight" / "summary.json").read_text())["steps"]
    assert csv_losses(tmp_path / "run") == csv_losses(tmp_path / "straight")
    resumed, straight = (load_weights(tmp_path / name / "trainable.safetensors") for name in ("run", "straight"))
    assert resumed.keys() == straight.keys()
    assert all(resumed[k].equal(straight[k]) for k in straight)


def _study_cells() -> list:
    """One cell (seed 0) per method of the SFT study; DPO with LoRA, Full and prompt tuning; both mixture tasks."""
    picked = []
    for name, keep in (
        ("methods_sft_tiny", lambda axes: True),
        (
            "methods_sft_dpo_tiny",
            lambda axes: axes["objective"] == "dpo" and axes["method"] in ("lora", "full", "prompt"),
        ),
        ("mixture_budget_tiny", lambda axes: axes["budget"] == "30"),
    ):
        cells, _ = expand(load_study(REPO / "experiments" / "sweeps" / f"{name}.yaml"))
        for cell in cells:
            if cell.axes.get("seed") == "0" and keep(cell.axes):
                label = "-".join(v for k, v in cell.axes.items() if k != "seed")
                picked.append(pytest.param(cell_argv(cell), id=f"{name}:{label}", marks=pytest.mark.slow))
    return picked


def _reads_shared_data(cell: list[str]) -> bool:
    """Whether the cell's arguments, or a config file among them, name the shared offline data folder."""
    files = (REPO / arg.split("=", 1)[-1] for arg in cell if arg.endswith(".yaml"))
    texts = [*cell, *(f.read_text() for f in files if f.is_file())]
    return any("../shared/data" in text for text in texts)


@pytest.mark.parametrize("cell", _study_cells())
def test_every_shipped_study_cell_resumes_exactly(cell: list[str], tmp_path: Path) -> None:
    reason = incompatibility(Composer().parse(cell))
    if reason:  # the sweep skips such a cell before anything launches (FeatureExtraction with SFT)
        pytest.skip(f"the sweep skips this cell: {reason}")
    if _reads_shared_data(cell) and not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip("the shared offline data folder is not beside this checkout")

    def argv(root: str, tape_file: str, *extra: str) -> list[str]:
        shorter = ["--trainer.max_steps=8", "--checkpoint_every_n_steps=1"]
        return [
            *cell,
            *shorter,
            f"--trainer.default_root_dir={tmp_path / root}",
            TAPE,
            f"--trainer.callbacks.path={tmp_path / tape_file}",
            *extra,
        ]

    os.chdir(REPO)
    FTLabCLI(args=["fit", *argv("straight", "straight.jsonl")])
    kill = ["--trainer.callbacks+=tests.integration.resume_helpers.KillAt", "--trainer.callbacks.step=4"]
    killed = _run(["fit", *argv("run", "killed.jsonl", *kill)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    os.chdir(REPO)
    FTLabCLI(args=["fit", *argv("run", "resumed.jsonl", "--ckpt_path=last")])
    straight, resumed = tape(tmp_path / "straight.jsonl"), tape(tmp_path / "resumed.jsonl")
    assert 4 <= min(resumed) <= 5 and sorted(resumed) == [s for s in sorted(straight) if s >= min(resumed)]
    assert all(resumed[step] == straight[step] for step in resumed), [(s, resumed[s], straight[s]) for s in resumed]
    assert (tmp_path / "run" / "DONE").exists()
