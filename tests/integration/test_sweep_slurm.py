"""A study submitted as a SLURM job array to a real one-node cluster (slurm/local/start.sh installs slurm-wlm
and munge from Debian packages and starts the daemons; stop.sh stops them). Root and apt (or SLURM) needed.

The requeue test: a cell preempted with a real USR1 saves last.ckpt at a step boundary, requeues itself with
`scontrol requeue`, comes back as restart 1 with `--ckpt_path .../last.ckpt` and logs, at every step, the loss an
uninterrupted copy of the same cell (the other task of the same array) logs, bit for bit."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from ftlab.callbacks.preemption import REQUEUE_FLAG
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


def slurm(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def wait_for(condition, seconds: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        assert time.monotonic() < deadline, f"{what} within {seconds:.0f} s\n{tail}"
        time.sleep(0.5)


def losses(run: Path) -> dict[int, str]:
    """train/loss by step from the run's logs/metrics.csv, as written (the float's repr)."""
    rows = csv.DictReader((run / "logs" / "metrics.csv").open())
    found: dict[int, str] = {}
    for row in rows:
        if row.get("train/loss"):
            step = int(row["step"])
            assert found.setdefault(step, row["train/loss"]) == row["train/loss"], f"step {step} logged twice"
            found[step] = row["train/loss"]
    return found


def test_a_preempted_cell_requeues_itself_and_resumes_exactly(
    cluster: Path, tmp_path: Path, sft_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(REQUEUE_FLAG, raising=False)
    steps = 1000  # 15-40 s of training on one core: time to see it start and signal it
    path = tiny_study(tmp_path, sft_file, ["full"], [0])
    spec = yaml.safe_load(path.read_text())
    spec["overrides"]["trainer.max_steps"] = steps
    shown = "trainer.enable_model_summary"  # the same cell twice (the sweep refuses identical arguments)
    spec["axes"]["copy"] = [{"name": "straight", "set": {shown: True}}, {"name": "preempted", "set": {shown: False}}]
    setup = "export OMP_NUM_THREADS=1"  # one thread in both copies: the same float sums
    spec["launcher"] = {"slurm": {"time": "00:20:00", "cpus_per_task": 1, "max_parallel": 2, "setup": setup}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    started = time.perf_counter()
    main(["sweep", str(path), "--launcher", "slurm"])
    out = tmp_path / "study"
    entries = {e["axes"]["copy"]: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    preempted, straight = Path(entries["preempted"]["run_dir"]), Path(entries["straight"]["run_dir"])
    log = out / "logs" / f"{entries['preempted']['id']}.log"
    array = slurm("squeue", "-h", "-o", "%F").split()[0]
    task = f"{array}_{entries['preempted']['index']}"

    wait_for((preempted / "logs" / "metrics.csv").exists, 180, "no metrics (the fit did not start)", log)
    slurm("scancel", "--signal=USR1", "--batch", task)  # what --signal=B:USR1@120 sends before the time limit
    show = lambda: slurm("scontrol", "show", "job", task)  # noqa: E731
    wait_for(lambda: "Restarts=1" in show() and "JobState=PENDING" in show(), 120, "no requeue", log)
    slurm("scontrol", "update", f"jobid={task}", "StartTime=now")  # else eligible again after cred_expire
    wait_for(lambda: not slurm("squeue", "-h").strip(), 300, "the array did not finish", log)
    print(f"SLURM array with a requeued cell done in {time.perf_counter() - started:.1f} s")

    text = log.read_text()
    stop = re.search(r"ftlab: signal 10: saved (\S+) at step (\d+) and stopped", text)
    assert stop and Path(stop[1]) == preempted / "checkpoints" / "last.ckpt", text[-3000:]
    # the task by its array name: one task's SLURM_JOB_ID is the array's id, and requeueing that requeues both
    assert f"ftlab: scontrol requeue {task}: the job goes back in the queue" in text, text[-3000:]
    first, _, second = text.partition(" restart 1\n")
    assert " restart 0\n" in first and second, text[-3000:]  # the requeued task ran the array script again
    assert f"--ckpt_path {preempted / 'checkpoints' / 'last.ckpt'}" in second
    assert "Traceback" not in text and "hpc_ckpt" not in text and not list(preempted.glob("hpc_ckpt_*"))
    other = (out / "logs" / f"{entries['straight']['id']}.log").read_text()
    assert " restart 1" not in other and "ftlab: signal" not in other, other[-2000:]
    stopped_at = int(stop[2])
    assert 0 < stopped_at < steps - 50, stopped_at  # stopped early on: most steps ran after the resume
    for run in (straight, preempted):
        assert (run / "DONE").exists() and json.loads((run / "summary.json").read_text())["steps"] == steps
    # metrics.csv keeps the steps before the preemption (ftlab writes them back after Lightning's CSVLogger
    # deletes the file on resume) and holds every step once, each equal to the uninterrupted copy's
    reference, resumed = losses(straight), losses(preempted)
    assert sorted(resumed) == sorted(reference) and stopped_at in resumed
    assert all(resumed[step] == reference[step] for step in resumed), [
        (step, resumed[step], reference[step]) for step in resumed if resumed[step] != reference[step]
    ][:5]


# a `python` that is not the one ftlab is installed in, first on the jobs' PATH
OTHER_PYTHON = """#!/bin/sh
echo "ModuleNotFoundError: No module named 'jsonargparse'" >&2
exit 1
"""


def test_a_study_submitted_from_a_venv_that_is_not_activated_runs_in_that_venv(
    cluster: Path, tmp_path: Path, sft_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    other = tmp_path / "other-bin"
    other.mkdir()
    (other / "python").write_text(OTHER_PYTHON)
    (other / "python").chmod(0o755)
    path = tiny_study(tmp_path, sft_file, ["lora"], [0])
    spec = yaml.safe_load(path.read_text())
    spec["overrides"]["trainer.max_steps"] = 1
    spec["launcher"] = {"slurm": {"time": "00:10:00", "cpus_per_task": 1}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env |= {"PATH": f"{other}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": str(REPO)}
    python = str(venv / "bin" / "python")  # called by its path: the venv is not activated
    done = subprocess.run(
        [python, "-m", "ftlab", "sweep", str(path), "--launcher", "slurm"],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: not slurm("squeue", "-h").strip(), 300, "the array did not finish")
    out = tmp_path / "study"
    entry = json.loads((out / "manifest.jsonl").read_text())
    log = (out / "logs" / f"{entry['id']}.log").read_text()
    assert entry["python"] == python and entry["command"].startswith(f"{python} -m ftlab fit ")
    assert json.loads((out / "study.json").read_text())["environment"]["python"] == python
    assert (Path(entry["run_dir"]) / "DONE").exists(), log[-3000:]
    assert "ModuleNotFoundError" not in log


def test_train_sbatch_runs_ddp_over_two_srun_tasks(cluster: Path, tmp_path: Path, sft_file: Path) -> None:
    from tests.conftest import TINY_LLAMA

    over = tmp_path / "over.yaml"
    over.write_text(
        yaml.safe_dump(
            {
                "model": {"backbone": {"init_args": {"config": TINY_LLAMA, "vocab_size": 512}}},
                "data": {
                    "init_args": {"train": str(sft_file), "val_fraction": 0.25, "batch_size": 4, "max_length": 64}
                },
                "trainer": {"max_epochs": -1, "max_steps": 2, "log_every_n_steps": 1, "strategy": "ddp"},
            }
        )
    )
    run, out = tmp_path / "run", tmp_path / "slurm.out"
    job = slurm(
        "sbatch",
        "--parsable",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        f"--output={out}",
        f"--chdir={REPO}",
        str(REPO / "slurm" / "train.sbatch"),
        str(run),
        "--config",
        str(REPO / "experiments" / "quickstart.yaml"),
        "--config",
        str(over),
    ).strip()
    wait_for(lambda: not slurm("squeue", "-h", "-j", job).strip(), 300, "the job did not finish", out)
    text = out.read_text()
    assert "1 node(s) x 2 task(s)" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text, text[-3000:]
    assert "distributed_backend=gloo" in text, text[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert (run / "DONE").exists() and summary["steps"] == 2 and summary["strategy"] == "DDPStrategy"


def test_a_tuning_stage_runs_as_arrays_and_continues_by_itself(
    cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials as one array, a dependent job that calls the sweep again, which submits the cells at the best
    value; runs go through the scoring stand-in of test_sweep_tune (best learning rate 1e-3)."""
    from tests.unit.test_sweep_tune import FAKE_FIT, write_study

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    real = shutil.which("python3") or "python3"
    code = tmp_path / "fake_fit.py"
    code.write_text(FAKE_FIT)
    fake = tmp_path / "python"  # the interpreter the manifests record: fits are the stand-in, sweeps are real
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ "$3" = sweep ]; then shift 2; exec {real} -c "import sys; sys.executable = sys.argv.pop(1); '
        f'from ftlab.cli import main; main(sys.argv[1:])" "$0" "$@"; fi\n'
        f'shift 3\nexec {real} {code} "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr("sys.executable", str(fake))
    path = write_study(tmp_path, {"params": {"lr": {"key": "model.optimizer.init_args.lr", "values": [1e-4, 1e-3]}}})
    spec = yaml.safe_load(path.read_text())
    spec["axes"]["method"] = spec["axes"]["method"][:1]
    spec["launcher"] = {"slurm": {"time": "00:10:00", "cpus_per_task": 1}}
    path.write_text(yaml.safe_dump(spec))
    main(["sweep", str(path), "--launcher", "slurm"])
    out = tmp_path / "study"
    wait_for(lambda: (out / "manifest.jsonl").exists() and not slurm("squeue", "-h").strip(), 300, "no cells ran")
    cells = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    logs = "".join(p.read_text() for p in (out / "logs").glob("continue-*.out"))
    assert [c["tuned"] for c in cells] == [{"lr": 0.001}, {"lr": 0.001}] and all(c["trials"] == 2 for c in cells), logs
    assert all((Path(c["run_dir"]) / "DONE").exists() for c in cells), logs
    assert (out / "trials.sbatch").exists() and (out / "array.sbatch").exists()
    main(["results", str(out)])
    assert "| lora | lr=0.001 (2) | 2 |" in (out / "results" / "table.md").read_text()
