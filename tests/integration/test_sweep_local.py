"""A 4-cell study end to end on this machine: `ftlab sweep` runs real fits as subprocesses (tiny Llama,
3 steps each), then the CSV, the Markdown table and the plots are there; a rerun launches nothing."""

from __future__ import annotations

import csv
import json
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
    assert len(manifest) == 4 and all("-m ftlab fit --config" in line for line in manifest)

    capsys.readouterr()
    main(["sweep", str(study)])  # everything is done: nothing runs again
    assert "ftlab sweep: start" not in capsys.readouterr().out


@pytest.mark.slow
def test_single_vs_multi_task_and_budget_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped mixture x budget study, shrunk (tiny backbone, 3 steps, two budgets, one seed): every cell
    validates on both tasks at every budget, answers the held-out prompts, and the table reports them."""
    monkeypatch.chdir(REPO)
    spec = yaml.safe_load((EXPERIMENTS / "sweeps" / "mixture_budget_tiny.yaml").read_text())
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(f'{{"instruction": "Name {w}.", "input": "", "output": "{w}"}}\n' for w in "abcd"))
    gen = {"class_path": "ftlab.callbacks.generation_eval.GenerationEval", "init_args": {"file": str(held_out)}}
    gen["init_args"] |= {"limit": 4, "max_new_tokens": 8, "batch_size": 4}
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks+": [gen]}}))
    spec["base"] = [*spec["base"][:2], str(tmp_path / "gen.yaml")]
    spec["output"] = str(tmp_path / "study")
    spec["overrides"] |= {
        "model.backbone.init_args.config": TINY_LLAMA,
        "model.backbone.init_args.vocab_size": 512,
        "trainer.max_steps": 3,
        "trainer.log_every_n_steps": 1,
    }
    spec["axes"]["budget"]["values"] = [10, 20]
    spec["axes"]["seed"]["values"] = [0]
    study = tmp_path / "mixture.yaml"
    study.write_text(yaml.safe_dump(spec, sort_keys=False))

    main(["sweep", str(study)])
    out = tmp_path / "study"
    rows = list(csv.DictReader((out / "results" / "cells.csv").open()))
    assert [(r["tasks"], r["budget"], r["status"]) for r in rows] == [
        ("single", "10", "done"),
        ("single", "20", "done"),
        ("multi", "10", "done"),
        ("multi", "20", "done"),
    ]
    for row in rows:
        assert all(float(row[k]) > 0 for k in ("val/instructions/loss", "val/text/loss", "val/loss"))
        assert 0 <= float(row["gen/rougeL_f"]) <= 1 and 0 <= float(row["gen/bleu"]) <= 1
    data = [json.loads((out / "runs" / r["id"] / "summary.json").read_text())["data"] for r in rows]
    assert [d["instructions/train_examples"] for d in data] == [10, 20, 10, 20]  # the budget, exactly
    assert len({d["instructions/val_examples"] for d in data}) == 1  # one validation set at every budget
    table = (out / "results" / "table.md").read_text()
    head = "| tasks | budget | n | val/instructions/loss (mean ± 95% CI) | val/text/loss | gen/rougeL_f | gen/bleu |"
    assert head in table
