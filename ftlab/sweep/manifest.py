"""The manifest: one line per cell, with a stable run id and the exact command that runs it.

    <study dir>/manifest.jsonl   {"index", "id", "axes", "run_dir", "argv", "python", "command"} per cell
    <study dir>/commands.tsv     id, run folder, command to show (redacted) and command per line (line i+1 =
                                 cell i; read by SLURM, which logs the shown one and runs the last)
    <study dir>/study.json       what results need: name, metric, report, mode, seed axis, axis names, skipped
                                 cells; and the environment (interpreter, prefix, virtual env) that wrote it
    <study dir>/runs/<id>/       each cell's run folder (trainer.default_root_dir)
    <study dir>/logs/<id>.log    each cell's output

manifest.jsonl and commands.tsv are what runs (the local launcher and SLURM read them back), so they hold
the commands exactly, secrets included, like the study file they come from; logs and reports are redacted
(commands.tsv carries the redacted command beside the real one for the SLURM log header).

The id is `<axis labels>-<8 hex>`, the hex a SHA-256 of the cell's config files (in order) and its overrides
(sorted by key), so it depends on the arguments, not on how a mapping was ordered. Editing a config file's
contents does not change the id: a rerun skips the cells already done.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ftlab import runfolder
from ftlab.errors import FTLabError
from ftlab.sweep.study import Cell, Study

MANIFEST = "manifest.jsonl"
COMMANDS = "commands.tsv"
STUDY = "study.json"
RUNS = "runs"
LOGS = "logs"


@dataclass
class Entry:
    index: int
    id: str
    axes: dict[str, str]
    run_dir: str
    argv: list[str]
    python: str = field(default_factory=lambda: sys.executable)
    group: str = ""  # the tuning group (tune.by's labels) of a cell or a trial
    tuned: dict[str, Any] = field(default_factory=dict)  # a cell: its group's best values; a trial: its values
    trials: int = 0  # a cell: how many trials its group's tuning had

    @property
    def command(self) -> str:
        """The cell's command, run by the interpreter that wrote the manifest: a job on another node or
        under SLURM finds ftlab and its dependencies even when that interpreter's virtual environment is
        not activated there."""
        return shlex.join([self.python, "-m", "ftlab", "fit", *self.argv])


def arg_value(value: Any) -> str:
    """A value as jsonargparse reads it back from `--key=value` (YAML flow syntax; strings as they are)."""
    return value if isinstance(value, str) else json.dumps(value)


def run_id(cell: Cell) -> str:
    payload = json.dumps({"configs": cell.configs, "overrides": sorted(cell.overrides.items())}, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
    label = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "-".join(cell.axes.values()))[:80]
    return f"{label}-{digest}" if label else digest


def cell_argv(cell: Cell) -> list[str]:
    args = [a for path in cell.configs for a in ("--config", path)]
    return args + [f"--{k}={arg_value(v)}" for k, v in sorted(cell.overrides.items())]


def wandb_argv(study: Study, cell_id: str, axes: dict[str, str]) -> list[str]:
    """W&B logger arguments: one project per study, group = study, name = cell id, tags = axis values.

    The W&B logger must be the last logger in the list (experiments/loggers/wandb.yaml, composed last)."""
    spec = dict(study.wandb or {})
    config = spec.pop("config", "experiments/loggers/wandb.yaml")
    values = {"project": spec.pop("project", study.name), "group": study.name, "name": cell_id}
    values |= {"tags": [f"{a}={v}" for a, v in axes.items()], "config": {"study": study.name, **axes}, **spec}
    return ["--config", config, *(f"--trainer.logger.init_args.{k}={arg_value(v)}" for k, v in values.items())]


def build(study: Study, cells: list[Cell]) -> list[Entry]:
    entries, seen = [], {}
    for index, cell in enumerate(cells):
        cid = run_id(cell)
        digest = cid.rsplit("-", 1)[-1]
        if digest in seen:
            raise study.error("axes", f"cells {seen[digest]} and {cid} have the same arguments (run id hash {digest})")
        seen[digest] = cid
        run_dir = str(study.output / RUNS / cid)
        argv = cell_argv(cell) + (wandb_argv(study, cid, cell.axes) if study.wandb else [])
        entries.append(Entry(index, cid, cell.axes, run_dir, [*argv, f"--trainer.default_root_dir={run_dir}"]))
    return entries


def shown(command: str) -> str:
    """The command as a log shows it: secrets redacted, on one line without tabs (a column of commands.tsv)."""
    return runfolder.redact(command).replace("\t", "\\t").replace("\n", "\\n")


def write_entries(out: Path, entries: list[Entry], manifest: str = MANIFEST, commands: str = COMMANDS) -> None:
    lines = [json.dumps({**asdict(e), "command": e.command}) + "\n" for e in entries]
    # both are executed as written (the local launcher runs the manifest's argv, SLURM runs commands.tsv):
    # a secret passed as an argument must reach the run, so these two are not redacted
    runfolder.write_text(out / manifest, "".join(lines), redact_secrets=False)
    tsv = "".join(f"{e.id}\t{e.run_dir}\t{shown(e.command)}\t{e.command}\n" for e in entries)
    runfolder.write_text(out / commands, tsv, redact_secrets=False)


def write(study: Study, entries: list[Entry], skipped: list[dict[str, Any]]) -> None:
    out = study.output
    write_entries(out, entries)
    meta = {"name": study.name, "study_file": str(study.path), "metric": study.metric, "mode": study.mode}
    meta["report"] = study.report
    meta |= {"seed_axis": study.seed_axis, "axes": list(study.axes), "workdir": os.getcwd(), "skipped": skipped}
    meta["environment"] = environment()
    runfolder.write_json(out / STUDY, meta)
    (out / LOGS).mkdir(parents=True, exist_ok=True)


def environment() -> dict[str, Any]:
    """The interpreter and environment that wrote the manifest (and run its cells)."""
    return {"python": sys.executable, "prefix": sys.prefix, "virtual_env": os.environ.get("VIRTUAL_ENV")}


def read(study_dir: Path) -> tuple[dict[str, Any], list[Entry]]:
    meta_path, manifest = study_dir / STUDY, study_dir / MANIFEST
    if not manifest.is_file() or not meta_path.is_file():
        raise FTLabError(f"{study_dir} is not a study folder (no {MANIFEST} or {STUDY}); run `ftlab sweep` first")
    return json.loads(meta_path.read_text()), read_entries(manifest)


def read_entries(path: Path) -> list[Entry]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # a manifest written before the interpreter was recorded ran `python` from the PATH
    return [
        Entry(
            r["index"],
            r["id"],
            r["axes"],
            r["run_dir"],
            r["argv"],
            r.get("python", "python"),
            r.get("group", ""),
            r.get("tuned", {}),
            r.get("trials", 0),
        )
        for r in rows
    ]


def is_done(run_dir: Path) -> bool:
    return (run_dir / runfolder.DONE).is_file()


def resume_argv(run_dir: Path) -> list[str]:
    """`--ckpt_path` when a killed or requeued run left a checkpoint, so the rerun continues instead of starting
    over: checkpoints/last.ckpt (saved at a step boundary), else the newest of Lightning's hpc_ckpt_N.ckpt (only
    a config that turns Lightning's own SLURM requeue back on writes those, possibly mid-step); `--overwrite=true`
    when it failed before any checkpoint. The same rule as slurm/array.sbatch."""
    last = run_dir / runfolder.CHECKPOINTS / "last.ckpt"
    if last.is_file():
        return ["--ckpt_path", str(last)]
    hpc = [p for p in run_dir.glob("hpc_ckpt_*.ckpt") if p.is_file()]
    if hpc:
        return ["--ckpt_path", str(max(hpc, key=lambda p: p.stat().st_mtime))]
    # a cell that failed before its first checkpoint starts over (a run refuses a used folder without the flag)
    return ["--overwrite=true"] if (run_dir / runfolder.CONFIG).is_file() else []
