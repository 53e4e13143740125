"""Tuning trials: ordinary runs, one per proposed set of values, and each group's best values for its cells.

    <study dir>/trials.jsonl     one line per trial proposed so far: id, group, axes, values (`tuned`), command
    <study dir>/trials.tsv       the same commands for a SLURM array (line i+1 = trial i)
    <study dir>/trials/<id>/     each trial's run folder; its output in <study dir>/logs/<id>.log

A trial is the group's first cell with the tuned values set, the tuning's seed and overrides (its budget of
steps), and the validation loop on the selection split (`data.init_args.evaluate_on=selection`): its
`val/...` metrics are selection scores. Its id hashes its arguments like a cell's, so a rerun finds the
trials already done and runs only what is missing. Locally the stage loops until every group has spent its
budget; on SLURM each call submits one round as an array, plus a job that calls the sweep again once the
array is over (with `--continue`: a trial that was tried and failed then counts as failed, not retried).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlab import runfolder
from ftlab.errors import FTLabError
from ftlab.sweep import manifest
from ftlab.sweep.manifest import LOGS, Entry, is_done
from ftlab.sweep.pruning import read_record
from ftlab.sweep.study import Cell, Study, value_label
from ftlab.sweep.tune import best, propose

TRIALS = "trials.jsonl"
TRIAL_COMMANDS = "trials.tsv"
TRIAL_RUNS = "trials"
SELECTION = "data.init_args.selection_fraction"


@dataclass
class Group:
    label: str
    cell: Cell  # the first cell of the group: what its trials train


def groups(study: Study, cells: list[Cell]) -> dict[str, Group]:
    assert study.tune is not None
    by = study.tune.by if study.tune.by is not None else [a for a in study.axes if a != study.seed_axis]
    out: dict[str, Group] = {}
    for cell in cells:
        label = "-".join(cell.axes[a] for a in by) or "all"
        out.setdefault(label, Group(label, cell))
    return out


def group_of(study: Study, cell: Cell) -> str:
    assert study.tune is not None
    by = study.tune.by if study.tune.by is not None else [a for a in study.axes if a != study.seed_axis]
    return "-".join(cell.axes[a] for a in by) or "all"


def metric(study: Study) -> tuple[str, str]:
    assert study.tune is not None
    return study.tune.metric or study.metric, study.tune.mode or study.mode


def trial_entry(study: Study, group: Group, values: dict[str, Any]) -> Entry:
    spec = study.tune
    assert spec is not None
    overrides = {**group.cell.overrides, **spec.overrides, SELECTION: spec.selection_fraction}
    overrides |= {"data.init_args.evaluate_on": "selection", "seed_everything": spec.seed}
    overrides |= {p.key: values[p.name] for p in spec.params}
    axes = {"group": group.label, **{name: value_label(v) for name, v in values.items()}}
    cell = Cell(axes=axes, configs=list(group.cell.configs), overrides=overrides)
    cid = manifest.run_id(cell)
    run_dir = str(study.output / TRIAL_RUNS / cid)
    argv = [*manifest.cell_argv(cell), f"--trainer.default_root_dir={run_dir}", *pruning_argv(study, group.label)]
    return Entry(0, cid, axes, run_dir, argv, group=group.label, tuned=dict(values))


def pruning_argv(study: Study, group: str) -> list[str]:
    """The arguments that give a trial its pruner (`tune.pruner`), or none."""
    assert study.tune is not None
    pruner = study.tune.pruner
    if pruner is None:
        return []
    name, mode = metric(study)
    return [
        "--trainer.callbacks+=ftlab.sweep.pruning.PruneTrial",
        f"--trainer.callbacks.trials={study.output / TRIALS}",
        f"--trainer.callbacks.group={group}",
        f"--trainer.callbacks.metric={name}",
        f"--trainer.callbacks.mode={mode}",
        f"--trainer.callbacks.startup_trials={pruner.startup_trials}",
        f"--trainer.callbacks.warmup_steps={pruner.warmup_steps}",
    ]


def pruned_reports(entry: Entry) -> dict[int, float] | None:
    """The scores a pruned trial reported by step; None when the trial was not pruned."""
    record = read_record(entry.run_dir)
    return record["reports"] if record and record.get("pruned") and is_done(Path(entry.run_dir)) else None


def score(study: Study, entry: Entry) -> float | None:
    """The trial's selection score from its summary.json; None when it has none (failed, NaN, or pruned: a
    score at the step it stopped is not comparable to a finished trial's)."""
    path = Path(entry.run_dir) / runfolder.SUMMARY
    if not is_done(Path(entry.run_dir)) or not path.is_file() or pruned_reports(entry) is not None:
        return None
    value = json.loads(path.read_text()).get("metrics", {}).get(metric(study)[0])
    return float(value) if isinstance(value, (int, float)) and value == value else None


def attempted(study: Study, entry: Entry) -> bool:
    return (study.output / LOGS / f"{entry.id}.log").is_file()


def finished(study: Study, trials: list[Entry], failed: set[str]) -> list[tuple[Entry, float | None]]:
    return [(e, score(study, e)) for e in trials if is_done(Path(e.run_dir)) or e.id in failed]


def plan(study: Study, cells: list[Cell], failed: set[str]) -> tuple[list[Entry], list[Entry]]:
    """(every trial proposed so far, the trials to run now). `failed`: ids that failed and are not retried."""
    path = study.output / TRIALS
    known = manifest.read_entries(path) if path.is_file() else []
    trials, todo = list(known), []
    _, mode = metric(study)
    assert study.tune is not None
    for label, group in groups(study, cells).items():
        mine = [e for e in known if e.group == label]
        done = finished(study, mine, failed)
        pending = [e for e in mine if e.id not in {d.id for d, _ in done}]
        pruned = [(e.tuned, r) for e, _ in done if (r := pruned_reports(e)) is not None]
        history = [(e.tuned, value) for e, value in done if pruned_reports(e) is None]
        new = []
        if study.tune.sampler != "tpe":  # the whole budget is known: the values not yet proposed
            seen = [e.tuned for e in mine]
            new = [v for v in propose(study.tune, [], mode) if v not in seen]
        elif not pending:  # TPE learns from finished trials only: one round at a time
            new = propose(study.tune, history, mode, pruned)
        for values in new:
            entry = trial_entry(study, group, values)
            trials.append(entry)
            pending.append(entry)
        todo += pending
    for index, entry in enumerate(trials):
        entry.index = index
    manifest.write_entries(study.output, trials, TRIALS, TRIAL_COMMANDS)
    return trials, todo


def run_local(study: Study, cells: list[Cell], parallel: int) -> None:
    """Run rounds of trials on this machine until every group has spent its budget."""
    from ftlab.sweep.local import run_local as launch

    (study.output / LOGS).mkdir(parents=True, exist_ok=True)
    failed: set[str] = set()
    while True:
        _, todo = plan(study, cells, failed)
        if not todo:
            return
        print(f"ftlab sweep: tuning: {len(todo)} trials", flush=True)
        status = launch(todo, study.output, parallel)
        failed |= {cid for cid, s in status.items() if s.startswith("failed")}


def submit_round(study: Study, cells: list[Cell], config: Any, again: list[str], continuing: bool) -> bool:
    """Submit the next round of trials as a SLURM array, and `again` (this sweep, with --continue) to run
    after it; False when no trial is left to run (the cells can go)."""
    from ftlab.sweep.slurm import submit

    (study.output / LOGS).mkdir(parents=True, exist_ok=True)
    path = study.output / TRIALS
    known = manifest.read_entries(path) if path.is_file() else []
    failed = {e.id for e in known if continuing and attempted(study, e) and not is_done(Path(e.run_dir))}
    trials, todo = plan(study, cells, failed)
    if not todo:
        return False
    job = submit(study, trials, config, commands=TRIAL_COMMANDS, script="trials.sbatch", only=todo)
    if job is None:
        return False
    wrap = shlex.join([*again, "--continue"])
    command = ["sbatch", "--parsable", f"--dependency=afterany:{job}", f"--job-name={study.name}-next"]
    command += [f"--output={(study.output / LOGS).resolve()}/continue-%j.out", f"--chdir={Path.cwd()}"]
    done = subprocess.run([*command, f"--wrap={wrap}"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FTLabError(f"sbatch refused the sweep's next stage: {done.stderr.strip().splitlines()[-1:]}")
    print(f"ftlab sweep: tuning round submitted; job {done.stdout.strip()} runs `{wrap}` after array {job}")
    return True


def tuned_cells(study: Study, cells: list[Cell]) -> tuple[list[Cell], list[dict[str, Any]], list[dict[str, Any]]]:
    """(each cell at its group's best values, (group, values, trials) per such cell, cells with no good trial)."""
    assert study.tune is not None
    trials = manifest.read_entries(study.output / TRIALS)
    _, mode = metric(study)
    out, info, skipped = [], [], []
    for cell in cells:
        label = group_of(study, cell)
        done = [(e.tuned, score(study, e)) for e in trials if e.group == label and is_done(Path(e.run_dir))]
        chosen = best(done, mode)
        if chosen is None:
            tried = len([e for e in trials if e.group == label])
            skipped.append({"id": label, "axes": cell.axes, "reason": f"none of its {tried} tuning trials finished"})
            continue
        values = chosen[0]
        overrides = {**cell.overrides, SELECTION: study.tune.selection_fraction}
        overrides |= {p.key: values[p.name] for p in study.tune.params}
        out.append(Cell(dict(cell.axes), list(cell.configs), overrides))
        info.append({"group": label, "tuned": values, "trials": len(done)})
    return out, info, skipped


def again_argv(study_path: str, sets: list[str]) -> list[str]:
    """The sweep's own command, to run again after a round of trials (same interpreter and overrides)."""
    return [sys.executable, "-m", "ftlab", "sweep", study_path, "--launcher", "slurm", *(f"--set={s}" for s in sets)]
