"""Keep a resumed run's CSV metrics: Lightning's CSV writer deletes `metrics.csv` when a fit reopens its
folder, so a run resumed with `--ckpt_path` would hold only the steps after the resume.

Before the fit starts the CLI moves each CSV logger's file aside to `.metrics.csv.resume` and reads it
(`KeepCSVHistory.read`); once the checkpoint is restored and checked (`on_train_start`, global step G known)
the rows logged before step G are written back, the writer goes on appending after them with the same columns,
and the file aside goes. A resume that fails before that puts the file back (`on_exception`); one killed
outright leaves it aside, and the next resume reads it from there: the history survives any failed start.
Rows at step G or later were logged after the checkpoint by the interrupted run: the resumed run logs those
steps again, so they are dropped rather than kept twice. The loggers count batches, G counts optimizer steps: the
same with automatic optimization; under GRPO/PPO (several updates a batch) a resume from a checkpoint older than
the interruption can keep a few rows that the resumed run logs again (a preemption's checkpoint is the last step,
so it keeps none).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger

from ftlab import runfolder
from ftlab.runlock import is_launched_rank

ASIDE = ".metrics.csv.resume"


def _step(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


class KeepCSVHistory(pl.Callback):
    """Writes back the rows a resumed run's CSV loggers logged before its checkpoint."""

    def __init__(self, history: dict[int, tuple[list[str], list[dict[str, str]]]], aside: list[Path]) -> None:
        self.history = history  # logger position in trainer.loggers -> (columns, rows)
        self.aside = aside  # the files moved aside, put back if the fit fails before training starts

    @classmethod
    def read(cls, trainer: pl.Trainer) -> KeepCSVHistory | None:
        history, aside = {}, []
        for i, logger in enumerate(trainer.loggers):
            if isinstance(logger, CSVLogger):
                path = Path(logger.log_dir) / "metrics.csv"
                kept = path.with_name(ASIDE)
                if path.is_file() and not kept.is_file() and not is_launched_rank():
                    os.replace(path, kept)  # Lightning's writer deletes metrics.csv when it opens the folder
                if kept.is_file():
                    with kept.open(newline="") as f:
                        reader = csv.DictReader(f)
                        history[i] = (list(reader.fieldnames or []), list(reader))
                    aside.append(kept)
        return cls(history, aside) if history else None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if is_launched_rank():
            return
        for kept in self.aside:
            if kept.is_file():
                os.replace(kept, kept.with_name("metrics.csv"))  # the failed start wrote nothing worth keeping

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for i, (columns, rows) in self.history.items():
            logger: Any = trainer.loggers[i]
            kept = [r for r in rows if (s := _step(r)) is not None and s < trainer.global_step]
            writer = logger.experiment  # created now at the latest: the old file is gone
            logger.save()  # whatever this fit logged so far goes after the old rows, below
            pending = Path(writer.metrics_file_path)
            new = list(csv.DictReader(pending.open(newline=""))) if pending.is_file() else []
            keys = sorted(set(columns) | set(writer.metrics_keys) | {k for r in new for k in r})
            text = io.StringIO(newline="")
            out = csv.DictWriter(text, fieldnames=keys)
            out.writeheader()
            out.writerows(kept + new)
            runfolder.write_text(pending, text.getvalue(), redact_secrets=False)
            writer.metrics_keys = keys
        for kept in self.aside:
            kept.unlink(missing_ok=True)
        self.aside = []
