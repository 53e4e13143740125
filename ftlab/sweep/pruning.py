"""Pruning of tuning trials with Optuna's pruners, across processes (local or a SLURM array).

A trial run carries `PruneTrial`: at each validation it records its selection score by step in its run folder
(`pruning.json`), and asks Optuna's MedianPruner whether to stop, against the scores the group's finished
trials recorded (read from their folders into an in-memory Optuna study: the pruner's own rule, with no shared
database). A pruned trial stops at that step, keeps `pruned: true` in `pruning.json`, and is never chosen as
its group's best; TPE sees it as Optuna does, a pruned trial ranked by its last report.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from ftlab import runfolder
from ftlab.errors import FTLabError

log = logging.getLogger(__name__)
RECORD = "pruning.json"


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """A trial's `pruning.json` ({"reports": {step: score}, "pruned": bool}), or None when it has none."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    record["reports"] = {int(step): float(value) for step, value in record.get("reports", {}).items()}
    return record


class PruneTrial(pl.Callback):
    """Stop a tuning trial whose selection score falls below the median of its group's finished trials.

    Args:
        trials: The study's trials.jsonl (its lines name each trial's group and run folder).
        group: This trial's group: the trials it is compared with.
        metric: The selection score (a validation metric, e.g. val/loss).
        mode: min or max.
        startup_trials: Finished trials the group needs before any trial is pruned (Optuna's n_startup_trials).
        warmup_steps: A trial is never pruned at a step below this (Optuna's n_warmup_steps).
    """

    def __init__(
        self,
        trials: str,
        group: str,
        metric: str,
        mode: str = "min",
        startup_trials: int = 2,
        warmup_steps: int = 0,
    ) -> None:
        if mode not in ("min", "max"):
            raise FTLabError(f"PruneTrial mode must be min or max, got {mode!r}")
        self.trials = Path(trials)
        self.group = group
        self.metric = metric
        self.mode = mode
        self.startup_trials = startup_trials
        self.warmup_steps = warmup_steps
        self.reports: dict[int, float] = {}
        self.pruned = False
        self._warned = False

    def state_dict(self) -> dict[str, Any]:
        return {"reports": self.reports}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reports = {int(k): float(v) for k, v in state.get("reports", {}).items()}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or self.pruned:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            if not self._warned:  # e.g. a metric logged after validation (generation): nothing to prune on
                log.warning("PruneTrial: no %s at this validation; the trial is not pruned on it", self.metric)
                self._warned = True
            return
        score = float(value)
        if not math.isfinite(score):
            return  # a NaN score is the run's failure to report, not a rank
        self.reports[trainer.global_step] = score
        # one decision for every rank (each reads the sibling folders at its own moment)
        decision = self.should_prune(Path(trainer.default_root_dir)) if trainer.is_global_zero else False
        self.pruned = bool(trainer.strategy.broadcast(decision, src=0))
        if self.pruned:
            trainer.should_stop = True
        if trainer.is_global_zero:
            record = {"reports": self.reports, "pruned": self.pruned, "metric": self.metric}
            runfolder.write_json(Path(trainer.default_root_dir) / RECORD, record)

    def siblings(self, own: Path) -> list[Path]:
        """The run folders of the group's other trials proposed so far."""
        lines = self.trials.read_text().splitlines() if self.trials.is_file() else []
        entries = [json.loads(line) for line in lines if line.strip()]
        folders = [Path(e["run_dir"]) for e in entries if e.get("group") == self.group]
        return [f for f in folders if f.resolve() != own.resolve()]

    def should_prune(self, own: Path) -> bool:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=self.startup_trials, n_warmup_steps=self.warmup_steps)
        study = optuna.create_study(direction="minimize" if self.mode == "min" else "maximize", pruner=pruner)
        for folder in self.siblings(own):
            record = read_record(folder)
            if record is None or not record["reports"] or not (folder / runfolder.DONE).is_file():
                continue  # running, or failed: only finished trials set the bar, as in one Optuna process
            reports = record["reports"]
            if record.get("pruned"):
                study.add_trial(
                    optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, intermediate_values=reports)
                )
            else:
                last = reports[max(reports)]
                study.add_trial(optuna.trial.create_trial(value=last, intermediate_values=reports))
        trial = study.ask()
        for step in sorted(self.reports):
            trial.report(self.reports[step], step)
        return bool(trial.should_prune())
