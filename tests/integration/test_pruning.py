"""A tuning stage with Optuna's median pruner, on real fits: trials run one after another, and a trial whose
selection loss at a validation is worse than the median of the finished trials' stops there, is marked in the
tables and is never chosen."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from ftlab.sweep.cli import sweep
from tests.conftest import REPO

pytest.importorskip("optuna", reason="pruning uses Optuna: pip install 'ftlab[tune]'")


@pytest.mark.slow
def test_a_trial_worse_than_the_median_is_pruned_and_never_chosen(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    spec = {
        "name": "pruned",
        "output": str(tmp_path / "study"),
        "base": [str(REPO / "experiments" / "quickstart.yaml")],
        "overrides": {
            "trainer.max_epochs": -1,
            "trainer.max_steps": 6,
            "trainer.val_check_interval": 2,
            "trainer.limit_val_batches": 2,
            "trainer.enable_model_summary": False,
            "model.scheduler.init_args.warmup_steps": 1,
        },
        "axes": {"seed": {"key": "seed_everything", "values": [0]}},
        "tune": {
            # lr 0 never moves from the initial loss: worse than the two finished trials' median at step 2
            "params": {"lr": {"key": "model.optimizer.init_args.lr", "values": [1.0e-2, 3.0e-3, 0.0]}},
            "pruner": "median",
            "selection_fraction": 0.1,
        },
        "metric": "val/loss",
        "mode": "min",
        "seed_axis": "seed",
        "launcher": {"parallel": 1},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert sweep(str(path), None, None, False, []) == 0
    out = tmp_path / "study"
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    records = [json.loads((Path(t["run_dir"]) / "pruning.json").read_text()) for t in trials]
    assert [r["pruned"] for r in records] == [False, False, True]
    assert sorted(records[2]["reports"]) == ["2"]  # stopped at its first validation
    assert [sorted(r["reports"]) for r in records[:2]] == [["2", "4", "6"]] * 2
    summary = json.loads((Path(trials[2]["run_dir"]) / "summary.json").read_text())
    assert summary["steps"] == 2  # the pruned trial trained 2 of its 6 steps
    cell = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert cell["tuned"]["lr"] in (1.0e-2, 3.0e-3) and cell["trials"] == 3
    rows = list(csv.DictReader((out / "results" / "trials.csv").open()))
    assert [r["pruned_at"] for r in rows] == ["", "", "2"]
    assert "lr=0 | " in (table := (out / "results" / "table.md").read_text()) and "(pruned at step 2) |" in table
