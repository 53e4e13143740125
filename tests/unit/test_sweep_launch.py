"""Launching: incompatible cells are listed and skipped before anything runs; the local launcher skips done
cells, resumes and redoes failed ones, goes on after a failure; the SLURM script is rendered from the study."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

from ftlab.errors import FTLabError
from ftlab.sweep import manifest
from ftlab.sweep.cli import sweep
from ftlab.sweep.local import run_local
from ftlab.sweep.manifest import Entry, resume_argv
from ftlab.sweep.slurm import ranges, render, sbatch_lines
from ftlab.sweep.study import expand, load_study
from tests.conftest import REPO

# a stand-in for `python -m ftlab fit`: writes DONE into its run folder unless told to fail
FAKE_FIT = """
import sys, pathlib
args = sys.argv[1:]
print("args", args)
root = pathlib.Path([a.split("=", 1)[1] for a in args if a.startswith("--trainer.default_root_dir=")][0])
root.mkdir(parents=True, exist_ok=True)
if "--fail" in args:
    sys.exit(3)
(root / "DONE").write_text("")
"""


def entry(tmp_path: Path, index: int, name: str, *extra: str) -> Entry:
    run_dir = tmp_path / "runs" / name
    return Entry(index, name, {"m": name}, str(run_dir), [*extra, f"--trainer.default_root_dir={run_dir}"])


def test_local_rerun_skips_done_cells_and_redoes_failed_ones(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    done, broken, failing = entry(tmp_path, 0, "done"), entry(tmp_path, 1, "broken"), entry(tmp_path, 2, "x", "--fail")
    Path(done.run_dir).mkdir(parents=True)
    (Path(done.run_dir) / "DONE").write_text("")
    last = Path(broken.run_dir) / "checkpoints" / "last.ckpt"  # a killed run left a checkpoint
    last.parent.mkdir(parents=True)
    last.write_text("")
    program = [sys.executable, "-c", FAKE_FIT]
    status = run_local([done, broken, failing], tmp_path, parallel=2, program=program)
    assert status == {"done": "done-before", "broken": "done", "x": "failed (exit 3)"}
    assert not (tmp_path / "logs" / "done.log").exists()
    assert f"'--ckpt_path', '{last}'" in (tmp_path / "logs" / "broken.log").read_text()
    again = run_local([done, broken, failing], tmp_path, program=program)
    assert again == {"done": "done-before", "broken": "done-before", "x": "failed (exit 3)"}
    assert (tmp_path / "logs" / "x.log").read_text().count("== ") == 2  # one log per cell, attempts appended


def test_resume_prefers_the_step_boundary_checkpoint(tmp_path: Path) -> None:
    assert resume_argv(tmp_path) == []
    (tmp_path / "config.yaml").write_text("")  # started, failed before any checkpoint: start over
    assert resume_argv(tmp_path) == ["--overwrite=true"]
    old, new = tmp_path / "hpc_ckpt_1.ckpt", tmp_path / "hpc_ckpt_2.ckpt"
    old.write_text("")
    new.write_text("")
    os.utime(old, (1, 1))
    assert resume_argv(tmp_path) == ["--ckpt_path", str(new)]  # no last.ckpt: the newest HPC checkpoint
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_text("")
    os.utime(last, (1, 1))  # older than both HPC files, and still preferred: it was saved at a step boundary
    assert resume_argv(tmp_path) == ["--ckpt_path", str(last)]


def write_study(tmp_path: Path, launcher: dict | None = None) -> Path:
    exp = REPO / "experiments"
    spec = {
        "output": str(tmp_path / "study"),
        "base": [str(exp / "quickstart.yaml")],
        "axes": {"method": [str(exp / "methods" / m) for m in ("lora.yaml", "feature_extraction.yaml")]},
        "launcher": launcher or {},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_incompatible_cells_are_listed_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep(str(write_study(tmp_path)), None, None, True, ["trainer.max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "1 cells, 0 excluded, 1 incompatible" in out
    assert "skip feature_extraction-" in out and "trains only an objective's head, and objective SFT has none" in out
    assert "-m ftlab fit --config" in out and "--trainer.max_steps=2" in out
    assert not (tmp_path / "study").exists()  # a dry run writes nothing


def test_commands_keep_secrets_and_log_headers_redact_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTLAB_TEST_API_KEY", "sk-0123456789")
    study = load_study(write_study(tmp_path))
    study.overrides["trainer.logger.init_args.api_key"] = "sk-0123456789"
    entries = manifest.build(study, expand(study)[0][:1])
    manifest.write(study, entries, [])
    out = Path(study.output)
    # what SLURM and the local launcher execute must be the command itself
    assert "--trainer.logger.init_args.api_key=sk-0123456789" in (out / manifest.COMMANDS).read_text()
    assert manifest.read(out)[1][0].argv == entries[0].argv
    run_local(entries, out, program=[sys.executable, "-c", FAKE_FIT])
    header = (out / "logs" / f"{entries[0].id}.log").read_text().splitlines()[0]
    assert "api_key=<redacted:FTLAB_TEST_API_KEY>" in header and "sk-0123456789" not in header


# a stand-in for the interpreter that the array script execs: records the arguments it got
FAKE_PYTHON = """#!/bin/sh
printf '%s\\n' "$*" > "$FAKE_OUT"
"""


def test_slurm_log_header_is_redacted_and_the_job_gets_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTLAB_TEST_API_KEY", "sk-0123456789")
    study = load_study(write_study(tmp_path))
    study.overrides["trainer.logger.init_args.api_key"] = "sk-0123456789"
    entries = manifest.build(study, expand(study)[0][:1])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    entries[0].python = str(bin_dir / "python")  # the interpreter that wrote the manifest runs, not the PATH's
    manifest.write(study, entries, [])
    script = tmp_path / "array.sbatch"
    script.write_text(render(study, Namespace(trainer=Namespace(devices=1, num_nodes=1, accelerator="cpu"))))
    ran = tmp_path / "ran.txt"
    env = {**os.environ, "FAKE_OUT": str(ran)}
    env |= {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "0"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    log = (Path(study.output) / "logs" / f"{entries[0].id}.log").read_text()
    assert "job 77_0" in log and "-m ftlab fit --config" in log  # the header and the command shown
    assert "api_key=<redacted:FTLAB_TEST_API_KEY>" in log and "sk-0123456789" not in log
    assert "-m ftlab fit" in ran.read_text() and "--trainer.logger.init_args.api_key=sk-0123456789" in ran.read_text()


def test_unknown_launcher_and_bad_keys_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(FTLabError, match=r"study .*s.yaml: launcher: unknown launcher pbs"):
        sweep(str(write_study(tmp_path)), "pbs", None, True, [])
    with pytest.raises(FTLabError, match=r"cell lora-\w+ does not parse: .*--trainer.max_stepz"):
        sweep(str(write_study(tmp_path)), None, None, True, ["trainer.max_stepz=2"])


def test_slurm_script_takes_tasks_from_devices(tmp_path: Path) -> None:
    study = load_study(
        write_study(tmp_path, {"slurm": {"time": "01:00:00", "signal_seconds": 90, "gres": "gpu:a100:2"}})
    )
    lines = sbatch_lines(study, "s", devices=2, num_nodes=1, accelerator="gpu")
    assert "#SBATCH --ntasks-per-node=2" in lines and "#SBATCH --signal=USR1@90" in lines
    assert "#SBATCH --gres=gpu:a100:2" in lines and "#SBATCH --time=01:00:00" in lines and "#SBATCH --requeue" in lines
    one = sbatch_lines(study, "s", devices=1, num_nodes=1, accelerator="cpu")
    assert "#SBATCH --signal=B:USR1@90" in one and "#SBATCH --ntasks-per-node=1" in one
    assert ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and ranges([3]) == "3"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "experiments" / "sweeps").glob("*.yaml")))
def test_shipped_studies_compose(name: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(REPO)
    assert sweep(f"experiments/sweeps/{name}", None, None, True, []) == 0
    assert "-m ftlab fit --config experiments/" in capsys.readouterr().out


def test_a_study_with_wandb_gives_each_cell_its_project_group_name_and_tags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ftlab.sweep.compat import Composer

    monkeypatch.chdir(REPO)
    spec = {
        "name": "wb",
        "output": str(tmp_path / "wb"),
        "base": ["experiments/quickstart.yaml"],
        "axes": {"method": ["experiments/methods/lora.yaml"], "seed": {"key": "seed_everything", "values": [0, 1]}},
        "wandb": {"project": "ablations", "entity": "lab"},
    }
    path = tmp_path / "wb.yaml"
    path.write_text(yaml.safe_dump(spec))
    study = load_study(path)
    entries = manifest.build(study, expand(study)[0])
    composer = Composer()
    for e in entries:
        loggers = composer.parse(e.argv).trainer.logger
        assert loggers[0].class_path == "lightning.pytorch.loggers.CSVLogger"  # the run's own loggers stay
        wandb = loggers[-1]
        assert wandb.class_path == "lightning.pytorch.loggers.WandbLogger"
        args = wandb.init_args
        assert (args.project, args.group, args.name, args.entity) == ("ablations", "wb", e.id, "lab")
        assert args.tags == ["method=lora", f"seed={e.axes['seed']}"]
        assert {k: str(v) for k, v in args.config.items()} == {"study": "wb", "method": "lora", "seed": e.axes["seed"]}
    assert entries[0].id != entries[1].id


# a stand-in for srun: records the arguments it got
FAKE_SRUN = """#!/bin/sh
printf '%s\\n' "$@" > "$FAKE_OUT"
"""


def test_train_sbatch_sizes_the_run_from_the_allocation_and_uses_the_submitting_python(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    ran = tmp_path / "ran.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_OUT": str(ran)}
    env |= {"SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "16", "VIRTUAL_ENV": "/opt/venv"}
    env.pop("SLURM_NTASKS_PER_NODE", None)
    env.pop("FTLAB_PYTHON", None)
    script = str(REPO / "slurm" / "train.sbatch")
    done = subprocess.run(
        ["bash", script, str(tmp_path / "run"), "--config", "a.yaml"],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    args = ran.read_text().splitlines()
    assert args[:4] == ["--kill-on-bad-exit=1", "/opt/venv/bin/python", "-m", "ftlab"]
    assert "--trainer.num_nodes=2" in args and "--trainer.devices=8" in args and "a.yaml" in args
    env |= {"FTLAB_PYTHON": "/x/bin/python3", "SLURM_NTASKS_PER_NODE": "4"}
    subprocess.run(["bash", script, str(tmp_path / "run")], env=env, check=True, capture_output=True, timeout=60)
    args = ran.read_text().splitlines()
    assert args[1] == "/x/bin/python3" and "--trainer.devices=4" in args
    assert "#SBATCH --signal=USR1@120" in Path(script).read_text()  # to the srun step, which every rank is in


def test_the_manifest_records_the_interpreter_that_wrote_it(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path))
    entries = manifest.build(study, expand(study)[0][:1])
    manifest.write(study, entries, [])
    meta, back = manifest.read(Path(study.output))
    assert back[0].python == sys.executable and back[0].command.startswith(f"{sys.executable} -m ftlab fit ")
    assert meta["environment"]["python"] == sys.executable and meta["environment"]["prefix"] == sys.prefix
