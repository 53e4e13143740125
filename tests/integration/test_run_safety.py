"""Secrets never reach a run's files, starting over in a finished run folder takes an explicit flag (and
clears every checkpoint a requeued job could resume from), and checkpoints are written atomically beside
their final name, whatever $TMPDIR is and under every strategy ftlab uses."""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from ftlab import runfolder
from ftlab.cli import main
from tests.conftest import REPO, write_jsonl

BASE = REPO / "tests" / "integration" / "configs" / "resume_base.yaml"
SECRET = "sk-test-0123456789abcdef"


def fit(tmp: Path, root: Path, *extra: str) -> None:
    data = write_jsonl(tmp / "rows.jsonl", [{"instruction": f"Say {i}.", "output": f"number {i}"} for i in range(8)])
    main(
        [
            "fit",
            "--config",
            str(BASE),
            "--model.method=ftlab.methods.LoRA",
            "--model.objective=ftlab.objectives.SFT",
            "--data=ftlab.data.SFTDataModule",
            f"--data.train={data}",
            "--data.batch_size=4",
            "--trainer.max_steps=1",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir=ignored",
            f"--trainer.default_root_dir={root}",
            *extra,
        ]
    )


def test_redact_replaces_secret_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent.sock")  # where a secret lives is not a secret
    monkeypatch.setenv("HF_TOKEN", "short")  # too short to redact without mangling ordinary text
    text = f'key: {SECRET}\nquoted: "{SECRET}"\nsock: /tmp/agent.sock\nword: short'
    assert runfolder.redact(text) == (
        'key: <redacted:WANDB_API_KEY>\nquoted: "<redacted:WANDB_API_KEY>"\nsock: /tmp/agent.sock\nword: short'
    )


def test_a_secret_in_the_config_is_not_written_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MY_SERVICE_API_KEY", SECRET)
    root = tmp_path / "run"
    fit(tmp_path, root, f"--data.system_prompt=Use {SECRET} to call the service.")
    assert (root / "DONE").exists()
    written = [p for p in root.rglob("*") if p.is_file() and p.suffix in {".yaml", ".json", ".csv", ""}]
    assert any(p.name == "config.yaml" for p in written) and any(p.name == "hparams.yaml" for p in written)
    for path in written:
        assert SECRET not in path.read_text(errors="ignore"), path
    assert "<redacted:MY_SERVICE_API_KEY>" in (root / "config.yaml").read_text()


def test_starting_over_needs_overwrite_and_clears_the_old_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    root = tmp_path / "run"
    fit(tmp_path, root)
    done_before = (root / "DONE").stat().st_mtime_ns
    with pytest.raises(SystemExit):
        fit(tmp_path, root)
    assert (root / "DONE").stat().st_mtime_ns == done_before
    (root / "notes.txt").write_text("mine")
    old_step = (root / "checkpoints" / "last.ckpt").read_bytes()
    for hpc in (root / "hpc_ckpt_1.ckpt", root / "hpc_ckpt_2.ckpt", root / "checkpoints" / "hpc_ckpt_3.ckpt"):
        hpc.write_bytes(old_step)  # what Lightning's SLURM handler leaves: under SLURM a fit resumes from it
    fit(tmp_path, root, "--overwrite=true")
    assert (root / "DONE").stat().st_mtime_ns != done_before and (root / "notes.txt").read_text() == "mine"
    assert not list(root.rglob("hpc_ckpt_*")), sorted(root.rglob("hpc_ckpt_*"))
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"]
    saved = (root / "config.yaml").read_text()  # replaying the saved config neither deletes nor resumes
    assert "overwrite: false" in saved and "ckpt_path: null" in saved


def test_a_fit_writes_checkpoints_beside_their_final_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    elsewhere = tmp_path / "elsewhere"  # Lightning's own save would stage the checkpoint here
    elsewhere.mkdir()
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    renames: list[tuple[Path, Path]] = []
    replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        renames.append((Path(src), Path(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    root = tmp_path / "run"
    fit(tmp_path, root, "--trainer.max_steps=2")  # the base saves last.ckpt after every step
    checkpoints = root / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]  # no temporary file left beside it
    saves = [src for src, dst in renames if dst == checkpoints / "last.ckpt"]
    assert len(saves) >= 2 and all(src.parent == checkpoints and src.name.startswith(".last.ckpt.") for src in saves)
    assert not [p for p in elsewhere.rglob("*") if "ckpt" in p.name]
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2


def test_a_save_that_dies_halfway_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint_io = runfolder.AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io.save_checkpoint({"global_step": 1, "w": torch.ones(64)}, target)
    save = torch.save

    def dies_halfway(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        save(obj, buffer)
        with open(f, "wb") as out:
            out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        checkpoint_io.save_checkpoint({"global_step": 2, "w": torch.zeros(64)}, target)
    assert os.listdir(target.parent) == ["last.ckpt"]
    kept = checkpoint_io.load_checkpoint(target)
    assert kept["global_step"] == 1 and torch.equal(kept["w"], torch.ones(64))


class NotATensor:
    pass


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "payload": NotATensor()}, tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        runfolder.AtomicCheckpointIO().load_checkpoint(tmp_path / "evil.ckpt")


@pytest.mark.parametrize(
    "strategy",
    ["auto", "ddp", "ddp_spawn", "model_parallel", "async"],
)
def test_every_strategy_saves_atomically(strategy: str) -> None:
    kwargs: dict[str, Any] = {"strategy": strategy, "devices": 1 if strategy in ("auto", "async") else 2}
    if strategy == "model_parallel":  # ftlab's FSDP: whole checkpoints gathered on rank 0
        kwargs["strategy"] = ModelParallelStrategy(data_parallel_size=2, save_distributed_checkpoint=False)
    if strategy == "async":
        kwargs |= {"strategy": "auto", "plugins": [AsyncCheckpointIO()]}
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, **kwargs)
    runfolder.use_atomic_checkpoints(trainer.strategy)
    checkpoint_io = trainer.strategy.checkpoint_io
    if strategy == "async":
        checkpoint_io = checkpoint_io.checkpoint_io
    assert type(checkpoint_io) is runfolder.AtomicCheckpointIO
    assert type(pickle.loads(pickle.dumps(checkpoint_io))) is runfolder.AtomicCheckpointIO  # ddp_spawn pickles it
