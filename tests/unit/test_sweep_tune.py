"""The tuning stage: trials on the selection split, the seeds at each group's best values, resumable.

Runs go through a stand-in for `python -m ftlab fit` whose score is a known function of the learning rate
(best at 1e-3), so that which values each group must pick is known without training anything."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from ftlab.errors import FTLabError
from ftlab.sweep import local
from ftlab.sweep.cli import _parser, parallel_runs, sweep
from ftlab.sweep.study import load_study
from ftlab.sweep.tune import Param, best, propose
from tests.conftest import REPO

# scores (log10(lr) + 3)^2 (+ 0.5 for prompt, + 0.01·seed); the selection split and the validation split
# score differently, so a test sees which one each run was scored on; writes the arguments it got
FAKE_FIT = """
import json, math, pathlib, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
root = pathlib.Path(args["trainer.default_root_dir"])
root.mkdir(parents=True, exist_ok=True)
lr = float(args["model.optimizer.init_args.lr"])
loss = (math.log10(lr) + 3) ** 2 + (0.5 if "prompt" in " ".join(sys.argv) else 0.0)
loss += 0.01 * int(args.get("seed_everything", 0))
selection = args.get("data.init_args.evaluate_on") == "selection"
summary = {"metrics": {"val/loss": loss + (0.0 if selection else 1.0)}, "wall_seconds": 1.0 + lr,
           "peak_memory_mb": 100.0, "trainable_params": 10}
(root / "summary.json").write_text(json.dumps(summary))
(root / "args.json").write_text(json.dumps(args))
(root / "DONE").write_text("")
"""


def write_study(tmp_path: Path, tune: dict) -> Path:
    exp = REPO / "experiments"
    spec = {
        "name": "t",
        "output": str(tmp_path / "study"),
        "base": [str(exp / "quickstart.yaml")],
        "axes": {
            "method": [str(exp / "methods" / m) for m in ("lora.yaml", "prompt.yaml")],
            "seed": {"key": "seed_everything", "values": [0, 1]},
        },
        "tune": tune,
        "launcher": {"parallel": 2},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def fake_fit(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    launched: list[list[str]] = []
    real = local.run_local

    def run(entries, study_dir, parallel=1, program=None):
        launched.append([e.id for e in entries])
        return real(entries, study_dir, parallel, program=[sys.executable, "-c", FAKE_FIT])

    monkeypatch.setattr(local, "run_local", run)
    monkeypatch.chdir(REPO)
    return launched


GRID = {"params": {"lr": {"key": "model.optimizer.init_args.lr", "values": [1.0e-4, 1.0e-3, 1.0e-2]}}}


def test_grid_tuning_picks_each_methods_best_and_the_seeds_run_there(tmp_path: Path, fake_fit, capsys) -> None:
    tune = {**GRID, "by": ["method"], "overrides": {"trainer.max_steps": 5}, "selection_fraction": 0.2}
    assert sweep(str(write_study(tmp_path, tune)), None, None, False, []) == 0
    out = tmp_path / "study"
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 6 and {t["group"] for t in trials} == {"lora", "prompt"}
    for trial in trials:  # scored on the selection split, at the trials' budget and seed
        args = json.loads((Path(trial["run_dir"]) / "args.json").read_text())
        assert args["data.init_args.evaluate_on"] == "selection" and args["data.init_args.selection_fraction"] == "0.2"
        assert args["trainer.max_steps"] == "5" and args["seed_everything"] == "0"
        assert trial["command"].startswith(f"{sys.executable} -m ftlab fit ")
    cells = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(c["axes"]["method"], c["tuned"], c["trials"]) for c in cells] == [
        ("lora", {"lr": 0.001}, 3),
        ("lora", {"lr": 0.001}, 3),
        ("prompt", {"lr": 0.001}, 3),
        ("prompt", {"lr": 0.001}, 3),
    ]
    for cell in cells:  # the reported runs: at the best value, on the validation split, same training rows
        args = json.loads((Path(cell["run_dir"]) / "args.json").read_text())
        assert args["model.optimizer.init_args.lr"] == "0.001" and "data.init_args.evaluate_on" not in args
        assert args["data.init_args.selection_fraction"] == "0.2" and "trainer.max_steps" not in args
    rows = list(csv.DictReader((out / "results" / "table.csv").open()))
    assert [(r["method"], r["tuned"], r["trials"], r["val/loss"]) for r in rows] == [
        ("lora", "lr=0.001", "3.0", "1.005"),  # validation: 0 + 1.0 + mean(0.00, 0.01)
        ("prompt", "lr=0.001", "3.0", "1.505"),
    ]
    table = (out / "results" / "table.md").read_text()
    assert "| method | tuned (trials) | n |" in table and "| lora | lr=0.001 (3) | 2 | 1.005 ± 0.064 |" in table
    assert "## Tuning trials (scored on the selection split)" in table and "| prompt | lr=0.01 | 1.5 |" in table
    assert len(list(csv.DictReader((out / "results" / "trials.csv").open()))) == 6

    fake_fit.clear()
    capsys.readouterr()
    assert sweep(str(write_study(tmp_path, tune)), None, None, False, []) == 0  # idempotent: nothing runs again
    assert len(fake_fit) == 1 and "ftlab sweep: start" not in capsys.readouterr().out  # the cells, all done-before


def test_tpe_rounds_learn_from_finished_trials_and_replay_the_same(tmp_path: Path, fake_fit) -> None:
    pytest.importorskip("optuna")
    lr = {"key": "model.optimizer.init_args.lr", "low": 1.0e-5, "high": 1.0e-1, "log": True}
    tune = {"params": {"lr": lr}, "sampler": "tpe", "trials": 6, "batch": 2, "by": ["method"], "seed": 3}
    path = write_study(tmp_path, tune)
    assert sweep(str(path), None, None, False, []) == 0
    out = tmp_path / "study"
    assert [len(ids) for ids in fake_fit] == [4, 4, 4, 4]  # 3 rounds of 2 trials per group, then the 4 cells
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    by_group = {g: [t for t in trials if t["group"] == g] for g in ("lora", "prompt")}
    for group, mine in by_group.items():
        scores = [json.loads((Path(t["run_dir"]) / "summary.json").read_text())["metrics"]["val/loss"] for t in mine]
        chosen = [c for c in map(json.loads, (out / "manifest.jsonl").read_text().splitlines()) if c["group"] == group]
        assert chosen[0]["tuned"] == mine[scores.index(min(scores))]["tuned"] and chosen[0]["trials"] == 6
    # the same seed and history propose the same trials: a fresh study folder replays them
    again = tmp_path / "again"
    spec = yaml.safe_load(path.read_text()) | {"output": str(again)}
    path.write_text(yaml.safe_dump(spec))
    assert sweep(str(path), None, None, False, []) == 0
    replay = [json.loads(line)["tuned"] for line in (again / "trials.jsonl").read_text().splitlines()]
    assert replay == [t["tuned"] for t in trials]


def test_samplers_and_best() -> None:
    study_error = lambda key, msg: FTLabError(f"{key}: {msg}")  # noqa: E731
    from ftlab.sweep.tune import load_tune

    spec = load_tune(study_error, {**GRID, "trials": 2}, ["method", "seed"], "seed")
    assert propose(spec, [], "min") == [{"lr": 1.0e-4}, {"lr": 1.0e-3}]
    assert propose(spec, [({"lr": 1.0e-4}, 1.0)], "min") == [{"lr": 1.0e-3}]
    rand = load_tune(study_error, {**GRID, "sampler": "random", "trials": 3, "seed": 1}, ["method", "seed"], "seed")
    picks = propose(rand, [], "min")
    assert sorted(p["lr"] for p in picks) == [1.0e-4, 1.0e-3, 1.0e-2] and picks == propose(rand, [], "min")
    assert best([({"lr": 1}, 2.0), ({"lr": 2}, None), ({"lr": 3}, 1.0), ({"lr": 4}, 1.0)], "min") == ({"lr": 3}, 1.0)
    assert best([({"lr": 1}, 2.0), ({"lr": 3}, 1.0)], "max") == ({"lr": 1}, 2.0)
    assert best([({"lr": 1}, None)], "min") is None


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"params": {}}, r"tune.params: name at least one hyper-parameter"),
        ({**GRID, "trials": 4}, r"tune.trials: 4 trials exceed the grid's 3 points"),
        (
            {"params": {"lr": {"key": "x", "low": 1, "high": 0}}, "sampler": "random", "trials": 2},
            r"tune.params.lr: expected numbers low < high",
        ),
        ({"params": {"lr": {"key": "x", "low": 0, "high": 1}}}, r"tune.params: a grid takes lists of values"),
        ({**GRID, "sampler": "bayes"}, r"tune.sampler: unknown sampler bayes"),
        ({**GRID, "by": ["seed"]}, r"tune.by: expected a list of axes from \['method'\]"),
        ({**GRID, "budget": 3}, r"tune.budget: unknown key"),
        ({**GRID, "pruner": "hyperband"}, r"tune.pruner: unknown pruner hyperband"),
        ({**GRID, "pruner": {"kind": "median", "warmup_steps": -1}}, r"tune.pruner: startup_trials and warmup"),
        ({**GRID, "pruner": {"patience": 2}}, r"tune.pruner: expected median, or \{kind: median"),
    ],
)
def test_bad_tune_sections_are_one_sentence(tmp_path: Path, tune: dict, message: str) -> None:
    with pytest.raises(FTLabError, match=r"study .*s.yaml: " + message):
        load_study(write_study(tmp_path, tune))


def test_parallel_help_says_what_wins(tmp_path: Path) -> None:
    help_text = " ".join(_parser()._subparsers._group_actions[0].choices["sweep"].format_help().split())
    assert "runs at once (default: the study's launcher.parallel, else 1)" in help_text
    study = load_study(write_study(tmp_path, GRID))
    assert parallel_runs(study, None) == 2 and parallel_runs(study, 1) == 1
    study.launcher = {}
    assert parallel_runs(study, None) == 1


def test_dry_run_shows_the_first_trial_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(REPO)
    assert sweep(str(write_study(tmp_path, GRID)), None, None, True, []) == 0
    out = capsys.readouterr().out
    assert "tuning 2 groups; first trial:" in out and "--data.init_args.evaluate_on=selection" in out
    assert not (tmp_path / "study").exists()


def test_pruner_forms() -> None:
    from ftlab.sweep.tune import PrunerSpec, _pruner

    def error(key: str, message: str) -> FTLabError:
        return FTLabError(f"{key}: {message}")

    assert _pruner(error, None) is None and _pruner(error, "none") is None
    assert _pruner(error, "median") == PrunerSpec("median", 2, 0)
    assert _pruner(error, {"kind": "median", "startup_trials": 3, "warmup_steps": 10}) == PrunerSpec("median", 3, 10)


def record(folder: Path, reports: dict[int, float], pruned: bool = False, done: bool = True) -> str:
    folder.mkdir(parents=True)
    (folder / "pruning.json").write_text(json.dumps({"reports": reports, "pruned": pruned}))
    if done:
        (folder / "DONE").write_text("")
    return str(folder)


def test_a_trial_below_the_median_of_the_finished_ones_is_pruned(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from ftlab.sweep.pruning import PruneTrial

    finished = [record(tmp_path / "a", {2: 5.0, 4: 3.0}), record(tmp_path / "b", {2: 6.0, 4: 4.0})]
    running = record(tmp_path / "c", {2: 0.1}, done=False)  # not finished: it sets no bar
    other = record(tmp_path / "d", {2: 0.1})  # another group's
    lines = [{"group": "g", "run_dir": d} for d in (*finished, running)] + [{"group": "h", "run_dir": other}]
    trials = tmp_path / "trials.jsonl"
    trials.write_text("".join(json.dumps(line) + "\n" for line in lines))

    def prunes(reports: dict[int, float], mode: str = "min", **options) -> bool:
        callback = PruneTrial(str(trials), "g", "val/loss", mode, **options)
        callback.reports = reports
        return callback.should_prune(tmp_path / "me")

    # step 2: the finished trials' median is 5.5 (lower is better)
    assert prunes({2: 7.0}) and not prunes({2: 5.0})
    assert not prunes({2: 7.0}, "max")  # higher is better: 7 beats the median
    assert not prunes({2: 7.0}, startup_trials=3)  # only 2 finished trials so far
    assert not prunes({2: 7.0}, warmup_steps=3)  # steps before the warmup ends are never pruned
    assert prunes({2: 5.0, 4: 3.9})  # step 4: median 3.5


def test_pruned_trials_count_against_the_budget_and_inform_tpe() -> None:
    pytest.importorskip("optuna")
    from ftlab.sweep.tune import TuneSpec

    lr = Param("lr", "model.optimizer.init_args.lr", low=1.0e-5, high=1.0e-1, log=True)
    spec = TuneSpec([lr], sampler="tpe", trials=3, batch=2)
    assert len(propose(spec, [({"lr": 1e-3}, 1.0)], "min", [({"lr": 1e-1}, {5: 9.0})])) == 1  # 3 − 1 − 1
    assert propose(spec, [({"lr": 1e-3}, 1.0), ({"lr": 1e-4}, 2.0)], "min", [({"lr": 1e-1}, {5: 9.0})]) == []
