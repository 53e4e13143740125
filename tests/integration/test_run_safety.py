"""Secrets never reach a run's files, and starting over in a finished run folder takes an explicit flag."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    fit(tmp_path, root, "--overwrite=true")
    assert (root / "DONE").stat().st_mtime_ns != done_before and (root / "notes.txt").read_text() == "mine"
    saved = (root / "config.yaml").read_text()  # replaying the saved config neither deletes nor resumes
    assert "overwrite: false" in saved and "ckpt_path: null" in saved
