"""The README, executed as a new user would: its shell blocks in the order printed, in a fresh copy of the
repository, each command as written.

Only three things differ from a user's session, each stated here: `pip install ...` steps are not run (this
environment has ftlab installed already, and reinstalling would change it for everything else), the README's
own test command is not run (it is this suite), and the real-model example (a hub download onto a GPU) is
skipped offline. Every `python -m ftlab fit` gets `--trainer.max_epochs=-1 --trainer.max_steps=3
--trainer.limit_val_batches=1` appended, which only shortens it: later flags override earlier ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SHORTEN = ["--trainer.max_epochs=-1", "--trainer.max_steps=3", "--trainer.limit_val_batches=1"]
NOT_RUN = ("pip install", "python -m pytest")  # see the module docstring
OFFLINE_SKIP = ("trainer_gpu.yaml",)  # a hub model on a GPU
NOISE = ("LightningCLI's args parameter", "litlogger", "LeafSpec", "is_gradient_checkpointing", "Loading weights")


def shell_blocks(readme: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", readme, flags=re.S)


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, `a && b` chains split into their steps."""
    joined = re.sub(r"\\\n\s*", " ", block)
    steps = [step.strip() for line in joined.splitlines() for step in line.split("&&")]
    return [step for step in steps if step and not step.startswith("#")]


def test_commands_are_read_from_the_readme() -> None:
    blocks = [commands(b) for b in shell_blocks((REPO / "README.md").read_text())]
    flat = [c for block in blocks for c in block]
    assert flat[:3] == [
        "pip install torch==2.13.0",
        "pip install -c .ci/constraints.txt -e .",
        "python -m ftlab fit --config experiments/quickstart.yaml",
    ]
    assert any("ftlab export" in c for c in flat) and any("rl_quickstart.yaml" in c for c in flat)


@pytest.mark.slow
def test_readme_runs_top_to_bottom(tmp_path: Path) -> None:
    clone = tmp_path / "ftlab"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(".git", "runs", "exported", "__pycache__", "*.egg-info"))
    env = {**os.environ, "PYTHONPATH": str(clone), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    ran, folders = 0, []
    for block in shell_blocks((clone / "README.md").read_text()):
        if any(marker in block for marker in OFFLINE_SKIP):
            continue
        for command in commands(block):
            if command.startswith(NOT_RUN):
                continue
            command = command.replace("python -m", f"{sys.executable} -m", 1)
            if " -m ftlab fit " in command:
                command = " ".join([command, *SHORTEN])
            done = subprocess.run(
                ["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=900
            )
            assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
            assert "Traceback" not in done.stderr, done.stderr[-3000:]
            if " -m ftlab fit " in command:
                folders += re.findall(r"^run folder: (\S+)", done.stdout, flags=re.M)
                assert len(folders) == len(set(folders)) and folders, done.stdout[-2000:]  # a new folder each
                assert not [n for n in NOISE if n in done.stdout + done.stderr], done.stderr[-3000:]
            ran += 1
    assert ran >= 5  # quickstart, RL quickstart, composition, export, W&B
    assert (clone / "exported" / "quickstart_lora" / "adapter" / "adapter_config.json").is_file()
    assert (clone / "runs" / "rl_quickstart" / "summary.json").is_file()
