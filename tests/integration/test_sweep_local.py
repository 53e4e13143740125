"""A 4-cell study end to end on this machine: `ftlab sweep` runs real fits as subprocesses (tiny Llama,
3 steps each), then the CSV, the Markdown table and the plots are there; a rerun launches nothing."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import yaml

from ftlab.cli import main
from tests.conftest import REPO, TINY_LLAMA

EXPERIMENTS = REPO / "experiments"


def tiny_study(tmp_path: Path, sft_file: Path, methods: list[str], seeds: list[int]) -> Path:
    """A study over the quickstart, shrunk to the test backbone and a few steps."""
    spec = {
        "name": "tiny",
        "output": str(tmp_path / "study"),
        "base": [str(EXPERIMENTS / "quickstart.yaml")],
        "overrides": {
            "model.backbone.init_args.config": TINY_LLAMA,
            "model.backbone.init_args.vocab_size": 512,
            "data.init_args.train": str(sft_file),
            "data.init_args.val_fraction": 0.25,
            "data.init_args.batch_size": 4,
            "data.init_args.max_length": 64,
            "trainer.max_epochs": -1,
            "trainer.max_steps": 3,
            "trainer.log_every_n_steps": 1,
        },
        "axes": {
            "method": [str(EXPERIMENTS / "methods" / f"{m}.yaml") for m in methods],
            "seed": {"key": "seed_everything", "values": seeds},
        },
        "launcher": {"parallel": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
def test_four_cells_end_to_end(tmp_path: Path, sft_file: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(REPO)
    study = tiny_study(tmp_path, sft_file, ["full", "lora"], [0, 1])
    started = time.perf_counter()
    main(["sweep", str(study)])
    print(f"4 cells in {time.perf_counter() - started:.1f} s")
    out = tmp_path / "study"
    rows = list(csv.DictReader((out / "results" / "cells.csv").open()))
    assert [(r["method"], r["seed"], r["status"]) for r in rows] == [
        ("full", "0", "done"),
        ("full", "1", "done"),
        ("lora", "0", "done"),
        ("lora", "1", "done"),
    ]
    assert all(float(r["val/loss"]) > 0 and int(r["steps"]) == 3 for r in rows)
    assert int(rows[2]["trainable_params"]) < int(rows[0]["trainable_params"])
    table = (out / "results" / "table.md").read_text()
    assert "| method | n | val/loss (mean ± 95% CI) |" in table and table.count(" | 2 | ") == 2
    assert len(list((out / "results").glob("*.png"))) == 3
    assert len(list((out / "logs").glob("*.log"))) == 4
    manifest = (out / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 4 and all('"command": "python -m ftlab fit --config' in line for line in manifest)

    capsys.readouterr()
    main(["sweep", str(study)])  # everything is done: nothing runs again
    assert "ftlab sweep: start" not in capsys.readouterr().out
