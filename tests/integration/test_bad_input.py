"""Bad input, table-driven, through the real command line (`ftlab.cli.main`, in process).

Each case must end with exit status 2, a message naming the file, row or key (asserted), no
traceback, and nothing written over: the run folder's existing files are unchanged and no DONE appears.
A case is the arguments after `fit --config resume_base.yaml`, or a whole `sweep STUDY.yaml` command
(whose study writes into the same run folder: a refused study writes nothing at all).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from ftlab.cli import main
from tests.conftest import REPO, write_jsonl

BASE = REPO / "tests" / "integration" / "configs" / "resume_base.yaml"
DEFAULTS = ["--model.method=ftlab.methods.Full", "--model.objective=ftlab.objectives.SFT"]
ROWS = [{"instruction": f"Say {i}.", "output": f"number {i}"} for i in range(12)]


def sft(path: str, *extra: str) -> list[str]:
    return ["--data=ftlab.data.SFTDataModule", f"--data.train={path}", "--data.batch_size=4", *extra]


def _latin1(tmp: Path) -> str:
    (tmp / "latin1.jsonl").write_bytes(
        '{"instruction": "a", "output": "b"}\n{"instruction": "café", "output": "c"}\n'.encode("latin-1")
    )
    return str(tmp / "latin1.jsonl")


def good_data(tmp: Path) -> str:
    return str(write_jsonl(tmp / "good.jsonl", ROWS))


def write(tmp: Path, name: str, text: str) -> str:
    (tmp / name).write_text(text)
    return str(tmp / name)


def finished_run(tmp: Path) -> list[str]:
    (tmp / "run" / "config.yaml").write_text("seed_everything: 1\n")
    (tmp / "run" / "DONE").write_text("")
    return sft(good_data(tmp))


def checkpoint_of_another_method(tmp: Path) -> list[str]:
    import lightning

    state = {"state_dict": {"model.not.a.weight": torch.zeros(1)}, "pytorch-lightning_version": lightning.__version__}
    torch.save(state, tmp / "other.ckpt")
    return [*sft(good_data(tmp)), f"--ckpt_path={tmp / 'other.ckpt'}", "--model.method=ftlab.methods.LoRA"]


def bigger_tokenizer(tmp: Path) -> list[str]:
    from transformers import AutoModelForCausalLM

    from ftlab.models import TinyBackbone

    small = TinyBackbone(
        config={
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        vocab_size=300,
    )
    big = TinyBackbone(config={"model_type": "llama"}, vocab_size=512).tokenizer_dir()
    model = small.model_dir(AutoModelForCausalLM)
    return [
        "--model.backbone=ftlab.models.Pretrained",
        f"--model.backbone.name_or_path={model}",
        f"--model.backbone.tokenizer={big}",
        *sft(good_data(tmp)),
    ]


LORA = ["--model.method=ftlab.methods.LoRA", "--model.method.r=4"]
CSV = ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=logs"]


def started_run(tmp: Path, *extra: str) -> list[str]:
    """A LoRA run stopped after 2 of its steps (config, checkpoints, metrics; no summary, no DONE), and the
    arguments that resume it; `extra` (changed) arguments of the resume come last."""
    args = [*LORA, *sft(good_data(tmp)), *CSV]
    main(
        [
            "fit",
            "--config",
            str(BASE),
            *DEFAULTS,
            *args,
            "--trainer.max_steps=2",
            f"--trainer.default_root_dir={tmp / 'run'}",
        ]
    )
    for name in ("DONE", "summary.json", "trainable.safetensors"):
        (tmp / "run" / name).unlink()
    return [*args, "--ckpt_path=last", *extra]


def damaged_checkpoint(tmp: Path, keep: float) -> list[str]:
    resume = started_run(tmp)
    last = tmp / "run" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: int(last.stat().st_size * keep)])
    return resume


def no_checkpoint_left(tmp: Path) -> list[str]:
    resume = started_run(tmp)
    for path in (tmp / "run" / "checkpoints").iterdir():
        path.unlink()
    return resume


def held_by_a_live_fit(tmp: Path) -> list[str]:
    """The run folder's lock names a live process on this host (this test's parent), as a running fit's would."""
    from ftlab.runlock import LOCK, RunLock

    holder = RunLock(tmp / "run").me() | {"pid": os.getppid(), "start": None}
    (tmp / "run" / LOCK).write_text(json.dumps(holder))
    return sft(good_data(tmp))


def tokenizer_with_template(tmp: Path, template: str) -> str:
    """The base's tokenizer with another chat template (data.tokenizer)."""
    from ftlab.models import TinyBackbone

    base = yaml.safe_load(BASE.read_text())["model"]["backbone"]["init_args"]
    folder = tmp / "tokenizer"
    shutil.copytree(TinyBackbone(**base).tokenizer_dir(), folder)
    (folder / "chat_template.jinja").write_text(template)
    return str(folder)


GENERATION_ONLY = "{% for m in messages %}{% if m.role == 'user' %}<user>{{ m.content }}\n{% endif %}{% endfor %}"


def study(tmp: Path, axes: dict) -> list[str]:
    """`sweep` over a study whose folder is the run folder (base: the resume config, no data needed)."""
    spec = {"output": str(tmp / "run"), "base": [str(BASE)], "axes": axes}
    return ["sweep", write(tmp, "study.yaml", yaml.safe_dump(spec))]


CASES: dict[str, tuple[Callable[[Path], list[str]], str | tuple[str, ...]]] = {
    "malformed yaml": (
        lambda t: ["--config", write(t, "bad.yaml", "model: [unclosed\n"), *sft(good_data(t))],
        "bad.yaml",
    ),
    "unknown key": (lambda t: [*sft(good_data(t)), "--model.objective.init_args.bogus=1"], "bogus"),
    "wrong type": (lambda t: [*sft(good_data(t), "--data.batch_size=many")], "batch_size"),
    "unknown class": (lambda t: [*sft(good_data(t)), "--model.method=ftlab.methods.NoSuchMethod"], "NoSuchMethod"),
    "missing data file": (lambda t: sft(str(t / "absent.jsonl")), "absent.jsonl"),
    "unreadable row": (
        lambda t: sft(write(t, "broken.jsonl", '{"instruction": "a", "output": "b"}\n{oops\n')),
        "broken.jsonl",
    ),
    "missing fields": (lambda t: sft(str(write_jsonl(t / "nofield.jsonl", [{"instruction": "a"}]))), "output"),
    "empty dataset": (lambda t: sft(write(t, "empty.jsonl", "")), "empty.jsonl"),
    "every row truncated away": (lambda t: sft(good_data(t), "--data.max_length=2"), "max_length"),
    "val_fraction out of range": (lambda t: sft(good_data(t), "--data.val_fraction=1.5"), "val_fraction"),
    "limit below one": (lambda t: sft(good_data(t), "--data.limit=0"), "limit"),
    "objective and data disagree": (
        lambda t: [*sft(good_data(t)), "--model.objective=ftlab.objectives.DPO"],
        ("PreferenceBatch", "experiments/data/preference_example.yaml"),
    ),
    "method x objective": (
        lambda t: [*sft(good_data(t)), "--model.method=ftlab.methods.FeatureExtraction"],
        "FeatureExtraction",
    ),
    "method x strategy": (
        lambda t: [
            *sft(good_data(t)),
            "--model.method=ftlab.methods.QLoRA",
            "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
            "--trainer.strategy.data_parallel_size=1",
            "--trainer.strategy.tensor_parallel_size=1",
        ],
        "QLoRA",
    ),
    "gradual unfreezing x plain ddp": (
        lambda t: [*sft(good_data(t)), "--model.method=ftlab.methods.GradualUnfreeze", "--trainer.strategy=ddp"],
        "ddp_find_unused_parameters_true",
    ),
    "grpo group of one": (
        lambda t: [
            "--config=experiments/objectives/grpo.yaml",
            "--model.objective.num_generations=1",
            "--data=ftlab.data.PromptDataModule",
            "--data.train=ftlab/assets/synthetic_prompts.jsonl",
        ],
        "num_generations",
    ),
    "nan loss": (
        lambda t: [*sft(good_data(t)), "--model.optimizer.init_args.lr=1e10"],
        ("the training loss is", " at step "),
    ),
    "missing model path": (
        lambda t: [
            "--model.backbone=ftlab.models.Pretrained",
            f"--model.backbone.name_or_path={t / 'no-model'}",
            *sft(good_data(t)),
        ],
        "no-model",
    ),
    "tokenizer larger than embedding": (bigger_tokenizer, "embedding only"),
    "existing finished run": (finished_run, "already holds a finished run"),
    "missing checkpoint": (lambda t: [*sft(good_data(t)), f"--ckpt_path={t / 'gone.ckpt'}"], "gone.ckpt"),
    "checkpoint of another method": (checkpoint_of_another_method, "does not hold this run's trainable weights"),
    "trainer options that contradict each other": (
        lambda t: [*sft(good_data(t)), "--trainer.enable_progress_bar=false", "--trainer.callbacks+=RichProgressBar"],
        ("trainer: ", "enable_progress_bar=False"),
    ),
    "resume from a truncated checkpoint": (
        lambda t: damaged_checkpoint(t, 0.5),
        ("last.ckpt cannot be read", "truncated"),
    ),
    "resume from an empty checkpoint": (lambda t: damaged_checkpoint(t, 0.0), "last.ckpt is empty"),
    "resume with another method": (
        lambda t: started_run(t, "--model.method=ftlab.methods.Full"),
        "was saved by a run with method LoRA, but this run's method is Full",
    ),
    "resume with another shape": (
        lambda t: started_run(t, "--model.method.r=8"),
        ("holds model.", "of shape (4, ", "where this run has (8, "),
    ),
    "resume with nothing to resume": (no_checkpoint_left, "holds no checkpoint to resume"),
    "a second fit into a held run folder": (held_by_a_live_fit, ("is in use by another fit", f"pid {os.getppid()}")),
    "answer that is a JSON object": (
        lambda t: sft(str(write_jsonl(t / "obj.jsonl", [*ROWS[:3], {"instruction": "a", "output": {"x": 1}}]))),
        ("obj.jsonl row 3 field 'output' holds a dict", "not text or a number"),
    ),
    "chat template that renders no answer": (
        lambda t: sft(good_data(t), f"--data.tokenizer={tokenizer_with_template(t, GENERATION_ONLY)}"),
        ("good.jsonl", "rendered no answer token to train on in 12 rows"),
    ),
    "chat template that fails": (
        lambda t: sft(good_data(t), f"--data.tokenizer={tokenizer_with_template(t, '{% for m in messages %}')}"),
        ("good.jsonl row 0: the chat template of tokenizer", "fails: TemplateSyntaxError"),
    ),
    "data file not UTF-8": (
        lambda t: sft(_latin1(t)),
        ("latin1.jsonl is not UTF-8 text: line 2", "iconv"),
    ),
    "optimizer argument": (
        lambda t: [*sft(good_data(t)), "--model.optimizer.init_args.lr=-1"],
        "model.optimizer AdamW: Invalid learning rate: -1.0",
    ),
    "scheduler argument": (
        lambda t: [
            *sft(good_data(t)),
            "--model.scheduler=torch.optim.lr_scheduler.OneCycleLR",
            "--model.scheduler.init_args.max_lr=0.1",
        ],
        "model.scheduler OneCycleLR: You must define either total_steps",
    ),
    "disk full": (
        lambda t: [
            *sft(good_data(t)),
            "--trainer.callbacks+=tests.integration.resume_helpers.DiskFullAt",
            "--trainer.callbacks.step=1",
        ],
        ("no space left on the device writing", "last.ckpt", "resume with --ckpt_path last"),
    ),
    "reward function without a return": (
        lambda t: [
            "--config=experiments/objectives/grpo.yaml",
            "--model.objective.rewards=[{class_path: ftlab.rewards.FunctionReward, "
            "init_args: {function: tests.integration.resume_helpers.no_reward}}]",
            "--model.objective.num_generations=2",
            "--model.objective.max_new_tokens=4",
            "--data=ftlab.data.PromptDataModule",
            "--data.train=ftlab/assets/synthetic_prompts.jsonl",
            "--data.batch_size=2",
        ],
        "reward function no_reward returned NoneType, not a list of 4 numbers",
    ),
    "study with an empty axis": (lambda t: study(t, {"method": []}), "axes.method: the axis is empty"),
    "study with duplicate cells": (
        lambda t: study(
            t,
            {"steps": [{"name": "a", "set": {"trainer.max_steps": 2}}, {"name": "b", "set": {"trainer.max_steps": 2}}]},
        ),
        "have the same arguments",
    ),
}


# found once training ran: the folder holds a started run
FAIL_WHILE_TRAINING = {"nan loss", "disk full", "reward function without a return"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_sentence(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("earlier work")
    build, expected = CASES[case]
    extra = build(tmp_path)
    before = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    is_study = extra[:1] == ["sweep"]
    argv = extra if is_study else ["fit", "--config", str(BASE), *DEFAULTS, *extra, f"--trainer.default_root_dir={run}"]
    capsys.readouterr()
    environ = dict(os.environ)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
    finally:  # a strategy refused at setup has set up a process group already: leave none behind
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)
    err = capsys.readouterr().err
    assert exit_info.value.code not in (0, None), err
    assert exit_info.value.code == 2, err[-1500:]
    for part in (expected,) if isinstance(expected, str) else expected:
        assert part in err, err[-1500:]
    assert "Traceback" not in err
    after = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert all(after.get(name) == data for name, data in before.items()), "an existing file was written over"
    if case not in FAIL_WHILE_TRAINING:  # refused before training: nothing new either (a corrected rerun may start)
        assert sorted(after) == sorted(before), sorted(set(after) - set(before))
    assert (run / "DONE").exists() == ("DONE" in before)
    assert before["keep.txt"] == after["keep.txt"] == b"earlier work"  # the check above saw the file
    if is_study:  # refused before anything is written: no manifest, no logs, no run folders
        assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]


def test_the_readme_counts_the_table() -> None:
    readme = (REPO / "README.md").read_text()
    assert f"`tests/integration/test_bad_input.py` holds the table ({len(CASES)} cases" in readme
