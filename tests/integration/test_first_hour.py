"""What a new user sees first: the top-level help (without torch), a fit's console output (no library notices,
its run folder named at the end), and the warning when online RL starts with no reward spread."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from ftlab.callbacks.flat_rewards import FlatRewards
from ftlab.data import PromptDataModule
from ftlab.entry import SUBCOMMANDS
from ftlab.methods import Full
from ftlab.module import FineTuneModule
from ftlab.objectives import GRPO
from ftlab.rewards import FunctionReward
from tests.conftest import REPO, TINY_LLAMA, quiet_trainer

PROMPTS = REPO / "ftlab" / "assets" / "synthetic_prompts.jsonl"
NOISE = ("LightningCLI's args parameter", "litlogger", "LeafSpec", "is_gradient_checkpointing", "Loading weights")


def ftlab(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ftlab", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_top_level_help_names_ftlab_and_every_subcommand_without_torch() -> None:
    done = ftlab("--help")
    assert done.returncode == 0 and done.stdout.startswith(
        "usage: ftlab {fit,validate,test,predict,export,sweep,results}"
    )
    assert all(f"  {name} " in done.stdout for name in SUBCOMMANDS)
    probe = (
        "import sys; from ftlab.entry import usage; usage(); print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True
    )
    assert imported.stdout.strip() == "[]", imported.stderr


HELP_PROBE = """
import sys
from ftlab.entry import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    print(done.code, sorted({'torch', 'lightning'} & set(sys.modules)), file=sys.stderr)
"""


def test_subcommand_help_is_recorded_once_and_then_printed_without_torch(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FTLAB_CACHE": str(tmp_path / "cache"), "COLUMNS": "100"}

    def help_of(*argv: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", HELP_PROBE, *argv]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)

    first, second = help_of("fit", "--help"), help_of("fit", "--help")
    assert first.stderr.strip().endswith("0 ['lightning', 'torch']")  # built by LightningCLI
    assert second.stderr.strip() == "0 []"  # the recorded text: neither torch nor Lightning imported
    assert second.stdout == first.stdout and "--model.method" in first.stdout and "--trainer.max_steps" in first.stdout
    # another form of help is never answered from the record: the parser runs
    assert help_of("fit", "--model.method.help", "ftlab.methods.LoRA").stderr.strip().endswith("['lightning', 'torch']")


def test_the_help_record_is_keyed_by_what_shapes_the_text(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from ftlab import help_cache

    package = tmp_path / "ftlab"  # a stand-in package: editing one of its files gives another key
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text("x = 1\n")
    monkeypatch.setattr(help_cache, "ftlab", SimpleNamespace(__file__=str(package / "__init__.py"), __version__="9"))
    before = help_cache.key(["fit", "--help"])
    (package / "cli.py").write_text("x = 22\n")
    assert help_cache.key(["fit", "--help"]) != before

    base = help_cache.key(["fit", "--help"])
    assert help_cache.key(["validate", "--help"]) != base
    monkeypatch.setenv("COLUMNS", "61")
    wider = help_cache.key(["fit", "--help"])
    assert wider != base
    monkeypatch.setattr(help_cache, "_version", lambda name: "0.0-upgraded")
    assert help_cache.key(["fit", "--help"]) != wider
    assert help_cache.is_plain_help(["fit", "-h"]) and not help_cache.is_plain_help(["fit", "--config", "x", "-h"])
    assert not help_cache.is_plain_help(["sweep", "--help"])


def test_the_help_records_keep_the_newest_few_per_subcommand(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    from ftlab import help_cache

    monkeypatch.setenv("FTLAB_CACHE", str(tmp_path))
    folder = tmp_path / "help"
    folder.mkdir()
    for i in range(help_cache.KEEP + 3):  # records of earlier ftlab edits, oldest first
        old = folder / f"fit-{i:020d}.txt"
        old.write_text("old help")
        os.utime(old, ns=(i * 10**9, i * 10**9))
    (folder / "validate-0.txt").write_text("validate's own")
    monkeypatch.setattr(help_cache, "key", lambda argv: "f" * 20)
    help_cache._save(help_cache._path(["fit", "--help"]), "new help")
    kept = sorted(p.name for p in folder.iterdir())
    newest_old = [f"fit-{i:020d}.txt" for i in range(4, help_cache.KEEP + 3)]  # KEEP - 1 of them, and the new one
    assert kept == sorted([*newest_old, f"fit-{'f' * 20}.txt", "validate-0.txt"])
    assert help_cache.print_cached(["fit", "--help"])


def test_an_option_before_the_subcommand_is_one_sentence_with_the_fix() -> None:
    done = ftlab("--model.method.help", "ftlab.methods.LoRA")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "e.g. ftlab fit --model.method.help ftlab.methods.LoRA" in done.stderr


def test_a_fit_is_quiet_and_ends_with_its_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = ftlab(
        "fit",
        "--config",
        "experiments/quickstart.yaml",
        "--trainer.max_epochs=-1",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--data.init_args.max_length=64",
        f"--trainer.default_root_dir={run}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [n for n in NOISE if n in done.stdout + done.stderr] == []
    last = done.stdout.strip().splitlines()[-3:]
    assert last[0] == "fit stopped: max_steps=2 reached"
    startup = json.loads((run / "summary.json").read_text())["startup_seconds"]
    assert startup > 0 and last[1] == f"first step {startup:.1f} s after start (imports, config, model and data)"
    assert last[2].startswith(f"run folder: {run} (summary.json, trainable.safetensors, config.yaml, logs/metrics.csv")


def constant(prompts, completions, completion_ids, **columns) -> list[float]:
    return [0.0] * len(completions)


def ranked(prompts, completions, completion_ids, **columns) -> list[float]:
    return [float(i) for i in range(len(completions))]


@pytest.mark.parametrize("reward, warns", [(constant, True), (ranked, False)])
def test_flat_rewards_warn_once(reward, warns: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ftlab.models import TinyBackbone

    pl.seed_everything(0)
    objective = GRPO(rewards=[FunctionReward(reward)], num_generations=2, max_new_tokens=2)
    module = FineTuneModule(
        TinyBackbone(config=TINY_LLAMA, vocab_size=512),
        Full(),
        objective,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
    )
    flat = FlatRewards(patience=2)
    trainer = quiet_trainer(tmp_path, 3, limit_val_batches=0, callbacks=[flat])
    with caplog.at_level(logging.WARNING, logger="ftlab"):
        trainer.fit(module, PromptDataModule(train=str(PROMPTS), val_fraction=0.125, batch_size=2, max_length=32))
    warnings = [r.getMessage() for r in caplog.records if "rollout batches are all equal" in r.getMessage()]
    assert flat.warned == warns and len(warnings) == int(warns)
    if warns:
        assert "the first 2 rollout batches" in warnings[0] and "mean reward 0" in warnings[0]
