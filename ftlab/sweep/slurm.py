"""The SLURM launcher: renders slurm/array.sbatch for the study and submits one job array over its manifest.

Resources come from the study's `launcher.slurm` section:

    launcher:
      slurm:
        partition: gpu          # any sbatch long option, written as key: value (underscores become dashes)
        time: "04:00:00"
        cpus_per_task: 8
        mem: 64G
        max_parallel: 4         # --array=...%4
        signal_seconds: 120     # USR1 this long before the time limit: ftlab saves last.ckpt, requeues
        setup: source .venv/bin/activate   # shell lines run before each cell
        template: slurm/array.sbatch       # default: the repository's

`--ntasks-per-node` is trainer.devices (Lightning's SLURMEnvironment expects one task per device) and
`--nodes` trainer.num_nodes; on GPUs `--gres=gpu:<devices>` unless the study sets gres. Only cells without
a DONE marker are submitted, so a resubmission does only what is missing.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

from ftlab import runfolder
from ftlab.errors import FTLabError
from ftlab.sweep.manifest import COMMANDS, LOGS, Entry, is_done
from ftlab.sweep.study import Study

TEMPLATE = Path(__file__).resolve().parents[2] / "slurm" / "array.sbatch"
OWN = {"max_parallel", "signal_seconds", "setup", "template"}


def _count(devices: Any) -> int:
    if isinstance(devices, int):
        return max(devices, 1)
    if isinstance(devices, list):
        return len(devices)
    text = str(devices)
    return int(text) if text.isdigit() else 1


def ranges(indices: list[int]) -> str:
    """SLURM's array syntax for sorted indices: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    parts: list[str] = []
    for i in indices:
        if parts and int(parts[-1].rsplit("-", 1)[-1]) == i - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{i}"
        else:
            parts.append(str(i))
    return ",".join(parts)


def sbatch_lines(study: Study, name: str, devices: Any, num_nodes: int, accelerator: str) -> list[str]:
    spec = dict(study.launcher.get("slurm") or {})
    tasks = _count(devices)
    signal = int(spec.get("signal_seconds", 120))
    options: dict[str, Any] = {
        "job-name": name,
        "output": str(Path(study.output).resolve() / LOGS / "slurm-%A_%a.out"),
        "nodes": num_nodes,
        "ntasks-per-node": tasks,
        # one task: python is exec'd by the batch shell (B:); several: an srun step receives the signal
        "signal": f"B:USR1@{signal}" if tasks == 1 and num_nodes == 1 else f"USR1@{signal}",
        "requeue": None,
        "open-mode": "append",
    }
    if accelerator in ("gpu", "cuda") and "gres" not in spec:
        options["gres"] = f"gpu:{tasks}"
    for key, value in spec.items():
        if key not in OWN:
            options[key.replace("_", "-")] = value
    return [f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={v}" for k, v in options.items()]


def render(study: Study, config: Any, commands: str = COMMANDS) -> str:
    """The array script for this study over `commands` (the cells', or the tuning trials'); `config` is any
    cell's composed config (for devices and nodes)."""
    spec = study.launcher.get("slurm") or {}
    trainer = config.trainer
    tasks, nodes = _count(trainer.get("devices", 1)), int(trainer.get("num_nodes", 1) or 1)
    template = Path(spec.get("template", TEMPLATE))
    if not template.is_file():
        raise study.error("launcher.slurm.template", f"{template} does not exist")
    out = Path(study.output).resolve()
    fields = {
        "SBATCH_LINES": "\n".join(
            sbatch_lines(study, study.name, trainer.get("devices", 1), nodes, str(trainer.get("accelerator")))
        ),
        "WORKDIR": shlex.quote(str(Path.cwd())),
        "COMMANDS": shlex.quote(str(out / commands)),
        "LOGS": shlex.quote(str(out / LOGS)),
        "REFERENCES": shlex.quote(str(out / "reference_cache")),
        "SETUP": str(spec.get("setup", "")),
        "LAUNCH": "srun --kill-on-bad-exit=1" if tasks * nodes > 1 else "",
    }
    text = template.read_text()
    for key, value in fields.items():
        text = text.replace(f"@{key}@", value)
    return text


def submit(
    study: Study,
    entries: list[Entry],
    config: Any,
    dry_run: bool = False,
    commands: str = COMMANDS,
    script: str = "array.sbatch",
    only: list[Entry] | None = None,
) -> str | None:
    """Write <study dir>/`script` over `commands` and submit the entries (or `only` these) not yet done; the
    job id (None if nothing to do)."""
    path = Path(study.output) / script
    runfolder.write_text(path, render(study, config, commands))
    todo = [e.index for e in (entries if only is None else only) if not is_done(Path(e.run_dir))]
    if not todo:
        print("ftlab sweep: every cell is done")
        return None
    limit = (study.launcher.get("slurm") or {}).get("max_parallel")
    array = ranges(todo) + (f"%{int(limit)}" if limit else "")
    command = ["sbatch", "--parsable", f"--array={array}", str(path)]
    print("ftlab sweep:", shlex.join(command), flush=True)
    if dry_run:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise FTLabError("sbatch is not on PATH; run on a SLURM login node, or use --launcher local") from None
    if done.returncode != 0:
        raise FTLabError(f"sbatch refused {path}: {done.stderr.strip().splitlines()[-1:]}")
    job = done.stdout.strip().split(";")[0]
    print(f"ftlab sweep: submitted array job {job} ({len(todo)} runs); logs in {Path(study.output) / LOGS}")
    return job
