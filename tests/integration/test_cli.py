"""The command line: composed configs, replay from the saved config, user errors as one sentence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftlab.cli import main
from tests.conftest import REPO

QUICKSTART = str(REPO / "experiments" / "quickstart.yaml")
SMALL = ["--trainer.max_steps=6", "--trainer.log_every_n_steps=2", "--data.init_args.max_length=128"]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # configs name the bundled data relative to the repo root


def run(*args: str) -> None:
    main(["fit", "--config", QUICKSTART, *SMALL, *args])


def test_fit_writes_the_run_folder_and_replays_from_its_config(tmp_path: Path) -> None:
    run(f"--trainer.default_root_dir={tmp_path / 'a'}", "--config", str(REPO / "experiments/methods/lora.yaml"))
    a = tmp_path / "a"
    assert sorted(p.name for p in a.iterdir()) == [
        "DONE",
        "checkpoints",
        "config.yaml",
        "logs",
        "summary.json",
        "trainable.safetensors",
    ]
    assert (a / "checkpoints" / "last.ckpt").exists() and (a / "logs" / "metrics.csv").exists()
    config = yaml.safe_load((a / "config.yaml").read_text())
    assert config["model"]["method"]["class_path"] == "ftlab.methods.LoRA"
    first = json.loads((a / "summary.json").read_text())
    assert first["method"] == "LoRA" and first["steps"] == 6

    main(["fit", "--config", str(a / "config.yaml"), f"--trainer.default_root_dir={tmp_path / 'b'}"])
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert second["loss_curve"] == first["loss_curve"]
    assert second["val_loss"] == first["val_loss"]


def test_print_config_shows_the_composition(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["fit", "--config", QUICKSTART, "--config", str(REPO / "experiments/methods/freeze.yaml"), "--print_config"]
        )
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["method"] == {
        "class_path": "ftlab.methods.Freeze",
        "init_args": {"last_blocks": 1, "patterns": None, "embeddings": False, "top": True},
    }
    assert printed["model"]["objective"]["class_path"] == "ftlab.objectives.SFT"


def test_help_shows_component_docstrings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--model.method.help", "ftlab.methods.LoRA"])
    out = capsys.readouterr().out
    assert "Rank of the update" in out and "--model.method.target_modules" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.method.init_args.rank=4"], "Option 'rank' is not accepted"),
        (["--trainer.max_step=3"], "max_step"),
        (["--data.init_args.train=missing/rows.jsonl"], "ftlab: error: data file missing/rows.jsonl not found"),
        (
            ["--config", str(REPO / "experiments/methods/lora.yaml"), "--model.method.init_args.target_modules=[qkv]"],
            "LoRA target_modules ['qkv'] match no module",
        ),
    ],
)
def test_user_errors_are_one_clear_sentence(args, message, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(f"--trainer.default_root_dir={tmp_path}", *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "ftlab",
        "fit",
        "--config",
        QUICKSTART,
        *SMALL,
        f"--trainer.default_root_dir={tmp_path}",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["train_loss"] < summary["train_loss_first"]


def test_wandb_logs_offline_into_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(
        f"--trainer.default_root_dir={tmp_path}",
        "--config",
        str(REPO / "experiments/loggers/wandb.yaml"),
        "--trainer.max_steps=2",
    )
    runs = list((tmp_path / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (tmp_path / "logs" / "metrics.csv").exists() and (tmp_path / "DONE").exists()
