"""A run folder that cannot be corrupted: one fit holds it, a failed start or resume leaves it as it was, and
checkpoints every N steps are one option away. (The refusals' messages are cases of test_bad_input.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from ftlab import runfolder
from ftlab.cli import FTLabCLI, main
from ftlab.runlock import LOCK, RunLock
from tests.conftest import REPO, write_jsonl
from tests.integration.test_resume import csv_losses, killed_run

BASE = REPO / "tests" / "integration" / "configs" / "resume_base.yaml"
EPOCH_END_ONLY = (
    '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
    '"init_args": {"save_last": true, "save_top_k": 0}}]'
)


def fit_args(tmp: Path, root: Path, *extra: str) -> list[str]:
    data = write_jsonl(tmp / "rows.jsonl", [{"instruction": f"Say {i}.", "output": f"number {i}"} for i in range(16)])
    return [
        "fit",
        "--config",
        str(BASE),
        "--model.method=ftlab.methods.LoRA",
        "--model.method.r=4",
        "--model.objective=ftlab.objectives.SFT",
        "--data=ftlab.data.SFTDataModule",
        f"--data.train={data}",
        "--data.batch_size=4",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir=logs",
        f"--trainer.default_root_dir={root}",
        *extra,
    ]


def test_a_second_fit_into_a_running_fits_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "run"
    slow = ["--trainer.max_steps=12", "--model.optimizer.init_args.lr=0.001"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        [sys.executable, "-m", "ftlab", *fit_args(tmp_path, root, *slow)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (root / LOCK).exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first fit never took its lock"
            time.sleep(0.05)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(fit_args(tmp_path, root, "--trainer.max_steps=2", "--model.optimizer.init_args.lr=0.5"))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2
        assert f"is in use by another fit (pid {first.pid} on host {socket.gethostname()}" in err
        assert "Traceback" not in err
    finally:
        _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    # the folder is the first fit's alone: its config, one checkpoint name, its steps, and no lock left
    assert "lr: 0.001" in (root / "config.yaml").read_text()
    assert json.loads((root / "summary.json").read_text())["steps"] == 12
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"]
    assert sorted(csv_losses(root)) == list(range(12))  # every step once (logged at steps 0-11)
    assert not (root / LOCK).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    root = tmp_path / "run"
    root.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (root / LOCK).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname(), "start": "1"}))
    main(fit_args(tmp_path, root, "--trainer.max_steps=2"))
    assert (root / "DONE").exists() and not (root / LOCK).exists()


def test_a_lock_of_another_host_is_never_taken_over(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    (root / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "noon"}))
    with pytest.raises(Exception, match=r"in use by another fit \(pid 1 on host elsewhere, since noon\)"):
        RunLock(root).acquire()
    requeued = {"pid": 1, "host": "elsewhere", "slurm_job": "77"}  # the same SLURM job, requeued onto this node
    (root / LOCK).write_text(json.dumps(requeued))
    os.environ["SLURM_JOB_ID"] = "77"
    try:
        lock = RunLock(root)
        lock.acquire()
    finally:
        del os.environ["SLURM_JOB_ID"]
    assert json.loads((root / LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (root / LOCK).exists()


def test_a_fit_that_fails_to_start_leaves_no_started_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    root = tmp_path / "new" / "run"
    with pytest.raises(SystemExit):
        main(fit_args(tmp_path, root, "--trainer.max_steps=2", "--model.optimizer.init_args.lr=-1"))
    assert not (tmp_path / "new" / "run").exists()  # the folder it created for its lock went again
    main(fit_args(tmp_path, root, "--trainer.max_steps=2"))  # the corrected command, without --overwrite
    assert (root / "DONE").exists()


def test_a_resume_that_fails_after_reading_its_checkpoint_keeps_the_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    root = tmp_path / "run"
    main(fit_args(tmp_path, root, "--trainer.max_steps=3"))
    (root / "DONE").unlink()
    before = {p: p.read_bytes() for p in (root / runfolder.CONFIG, root / "logs" / "metrics.csv")}
    failing = ["--trainer.callbacks+=tests.integration.resume_helpers.RaiseAtFitStart", "--ckpt_path=last"]
    with pytest.raises(RuntimeError, match="setup failed on purpose"):
        main(fit_args(tmp_path, root, "--trainer.max_steps=5", *failing))
    assert {p: p.read_bytes() for p in before} == before
    assert not (root / "logs" / ".metrics.csv.resume").exists() and not (root / LOCK).exists()
    main(fit_args(tmp_path, root, "--trainer.max_steps=5", "--ckpt_path=last"))
    assert sorted(csv_losses(root)) == [0, 1, 2, 3, 4]


def test_checkpoint_every_n_steps_from_the_command_line(tmp_path: Path) -> None:
    # the config's ModelCheckpoint saves at epoch ends only (4 batches an epoch); the option makes it save every 2
    kill = ["--trainer.callbacks+=tests.integration.resume_helpers.KillAt", "--trainer.callbacks.step=3"]
    for every, expected in ((None, None), (2, 2)):
        root = tmp_path / f"every_{every}"
        option = [f"--checkpoint_every_n_steps={every}"] if every else []
        result = killed_run("sft_lora", root, tmp_path / "tape.jsonl", [EPOCH_END_ONLY, *option, *kill])
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
        last = root / "checkpoints" / "last.ckpt"
        saved = torch.load(last, map_location="cpu", weights_only=True)["global_step"] if last.exists() else None
        assert saved == expected
    os.chdir(REPO)  # a config without any ModelCheckpoint gets one that keeps last.ckpt only
    cli = FTLabCLI(
        args=[*fit_args(tmp_path, tmp_path / "x", "--trainer.callbacks=[]")[1:], "--checkpoint_every_n_steps=5"],
        run=False,
    )
    saving = [(c._every_n_train_steps, c.save_last, c.save_top_k, c.dirpath) for c in cli.trainer.checkpoint_callbacks]
    assert saving == [(5, True, 0, str(tmp_path / "x" / "checkpoints"))]


def test_a_resume_removes_the_temporary_files_of_saves_killed_mid_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(REPO)
    root = tmp_path / "run"
    main(fit_args(tmp_path, root, "--trainer.max_steps=3"))
    (root / "DONE").unlink()
    # what a SIGKILL inside atomic_write leaves (its mkstemp names), beside the intact files
    left = [
        Path(tempfile.mkstemp(prefix=".last.ckpt.", dir=root / "checkpoints")[1]),
        Path(tempfile.mkstemp(prefix=f".{runfolder.SUMMARY}.", dir=root)[1]),
    ]
    kept = [root / "notes.txt", root / f"{LOCK}.zz00yy11", root / ".hidden", root / ".env.settings"]  # not ours
    for path in (*left, *kept):
        path.write_text("partial")
    capsys.readouterr()
    main(fit_args(tmp_path, root, "--trainer.max_steps=5", "--ckpt_path=last"))
    err = capsys.readouterr().err
    assert not any(path.exists() for path in left) and all(path.exists() for path in kept)
    assert all(f"removed {path}, left by a save that was killed mid-write" in err for path in left)
    assert sorted(csv_losses(root)) == [0, 1, 2, 3, 4] and (root / "DONE").exists()


def test_a_fit_removes_killed_saves_in_its_own_checkpoint_folder_but_not_a_save_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(REPO)
    root, folder = tmp_path / "run", tmp_path / "elsewhere"  # a ModelCheckpoint dirpath outside the run folder
    callback = {"class_path": "ftlab.callbacks.ModelCheckpoint", "init_args": {"dirpath": str(folder)}}
    checkpoint = [f"--trainer.callbacks=[{json.dumps(callback)}]"]
    main(fit_args(tmp_path, root, "--trainer.max_steps=3", *checkpoint))
    (root / "DONE").unlink()
    killed, writing = (Path(tempfile.mkstemp(prefix=".last.ckpt.", dir=folder)[1]) for _ in range(2))
    two_hours_ago = time.time() - 7200
    os.utime(killed, (two_hours_ago, two_hours_ago))  # writing: just touched, as a save in progress (another run's)
    kept = folder / ".notes.txt.abcd1234"  # not a checkpoint's temporary name
    kept.write_text("mine")
    capsys.readouterr()
    main(fit_args(tmp_path, root, "--trainer.max_steps=5", *checkpoint, f"--ckpt_path={folder / 'last.ckpt'}"))
    assert not killed.exists() and writing.exists() and kept.exists()
    assert f"removed {killed}, left by a save that was killed mid-write" in capsys.readouterr().err
    assert sorted(csv_losses(root)) == [0, 1, 2, 3, 4] and (root / "DONE").exists()
