"""The local launcher: runs the manifest's commands on this machine, `parallel` at a time.

A cell whose run folder holds DONE is skipped, so a rerun does only what is missing; a failed cell is
reported and the others go on. A cell that left a checkpoint resumes from it. Each cell's output goes to
`<study dir>/logs/<id>.log` (appended, so a rerun keeps the earlier attempt above it), headed by its command
with secrets redacted.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import TextIO

from ftlab import runfolder
from ftlab.objectives.reference_cache import SHARED
from ftlab.sweep.manifest import LOGS, Entry, is_done, resume_argv

REFERENCES = "reference_cache"  # reference log-probs shared by the study's runs (DPO's precompute_reference)
LOAD = "logs/host_load.jsonl"  # the host's load average as each run ended (results note a busy host)


def _start(entry: Entry, study_dir: Path, program: list[str] | None) -> tuple[subprocess.Popen, TextIO]:
    run_dir = Path(entry.run_dir)
    argv = [*(program or [entry.python, "-m", "ftlab", "fit"]), *entry.argv, *resume_argv(run_dir)]
    log = (study_dir / LOGS / f"{entry.id}.log").open("a")
    log.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {runfolder.redact(entry.command)}\n")
    log.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", SHARED: str((study_dir / REFERENCES).resolve())}
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env), log


def run_local(
    entries: list[Entry], study_dir: Path, parallel: int = 1, program: list[str] | None = None
) -> dict[str, str]:
    """Run every cell not yet done; returns each cell's status: done-before, done, or failed (exit N).
    `program` is what each cell's arguments follow (default: the manifest's interpreter `-m ftlab fit`;
    tests put a stand-in there)."""
    status: dict[str, str] = {}
    todo = []
    for entry in entries:
        if is_done(Path(entry.run_dir)):
            status[entry.id] = "done-before"
        else:
            todo.append(entry)
    entries_by_id = {e.id: e for e in entries}
    running: dict[str, tuple[subprocess.Popen, TextIO, float]] = {}
    while todo or running:
        while todo and len(running) < max(1, parallel):
            entry = todo.pop(0)
            print(f"ftlab sweep: start {entry.id}", flush=True)
            proc, log = _start(entry, study_dir, program)
            running[entry.id] = (proc, log, time.perf_counter())
        time.sleep(0.2)
        for cid, (proc, log, started) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            log.close()
            del running[cid]
            ok = code == 0 and is_done(Path(entries_by_id[cid].run_dir))
            load = {"id": cid, "load1": os.getloadavg()[0], "cpus": os.cpu_count() or 1, "parallel": parallel}
            with (study_dir / LOAD).open("a") as file:
                file.write(json.dumps(load) + "\n")
            status[cid] = "done" if ok else f"failed (exit {code})"
            print(f"ftlab sweep: {status[cid]:<16} {cid} in {time.perf_counter() - started:.1f} s", flush=True)
    return status
