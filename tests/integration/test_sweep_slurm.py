"""A study submitted as a SLURM job array to a real one-node cluster (slurm/local/start.sh installs slurm-wlm
and munge from Debian packages and starts the daemons; stop.sh stops them). Root and apt (or SLURM) needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from ftlab.cli import main
from tests.conftest import REPO
from tests.integration.test_sweep_local import tiny_study

LOCAL = REPO / "slurm" / "local"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="the local SLURM cluster needs root"),
    pytest.mark.skipif(
        not (shutil.which("apt-get") or shutil.which("sbatch")), reason="neither apt-get nor SLURM is available"
    ),
]


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch):
    # munged wants every folder above its socket open to all: not pytest's 0700 tmp folders
    base = Path(tempfile.mkdtemp(prefix="ftlab-slurm-"))
    base.chmod(0o755)
    env = {**os.environ, "SLURM_LOCAL_DIR": str(base)}
    started = subprocess.run(["bash", str(LOCAL / "start.sh")], env=env, capture_output=True, text=True)
    assert started.returncode == 0, (
        f"the local SLURM cluster did not start: {(started.stdout + started.stderr)[-1500:]}"
    )
    monkeypatch.setenv("SLURM_CONF", str(base / "etc" / "slurm.conf"))
    monkeypatch.setenv("PATH", os.environ["PATH"] + ":/usr/sbin:/sbin")
    try:
        yield base
    finally:
        subprocess.run(["bash", str(LOCAL / "stop.sh")], env=env, capture_output=True, text=True)
        shutil.rmtree(base, ignore_errors=True)


def test_study_as_a_job_array(cluster: Path, tmp_path: Path, sft_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    path = tiny_study(tmp_path, sft_file, ["full", "lora"], [0])
    spec = yaml.safe_load(path.read_text())
    spec["launcher"] = {"slurm": {"time": "00:20:00", "cpus_per_task": 1, "max_parallel": 2}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    started = time.perf_counter()
    main(["sweep", str(path), "--launcher", "slurm"])
    deadline = time.monotonic() + 900
    while subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "the array did not finish in 15 minutes"
        time.sleep(2)
    print(f"SLURM array of 2 cells done in {time.perf_counter() - started:.1f} s")
    out = tmp_path / "study"
    script = (out / "array.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --signal=B:USR1@120" in script
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for entry in entries:
        run = out / "runs" / entry["id"]
        log = (out / "logs" / f"{entry['id']}.log").read_text()
        assert (run / "DONE").exists(), log[-2000:]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 3 and summary["metrics"]["val/loss"] > 0
        assert "== " in log and " restart 0" in log  # the array script's header, then the fit's output
    main(["results", str(out)])
    assert (out / "results" / "table.md").read_text().count("| 1 |") == 2
