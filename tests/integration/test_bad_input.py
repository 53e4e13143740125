"""Bad input, table-driven, through the real command line (`ftlab.cli.main`, in process).

Each case must end with a non-zero exit, a message naming the file, row or key (asserted), no
traceback, and nothing written over: the run folder's existing files are unchanged and no DONE appears.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ftlab.cli import main
from tests.conftest import REPO, write_jsonl

BASE = REPO / "tests" / "integration" / "configs" / "resume_base.yaml"
DEFAULTS = ["--model.method=ftlab.methods.Full", "--model.objective=ftlab.objectives.SFT"]
ROWS = [{"instruction": f"Say {i}.", "output": f"number {i}"} for i in range(12)]


def sft(path: str, *extra: str) -> list[str]:
    return ["--data=ftlab.data.SFTDataModule", f"--data.train={path}", "--data.batch_size=4", *extra]


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


CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
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
        "PreferenceBatch",
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
    "nan loss": (lambda t: [*sft(good_data(t)), "--model.optimizer.init_args.lr=1e10"], "the training loss is"),
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
}


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
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    environ = dict(os.environ)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(BASE), *DEFAULTS, *extra, f"--trainer.default_root_dir={run}"])
    finally:  # a strategy refused at setup has set up a process group already: leave none behind
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)
    err = capsys.readouterr().err
    assert exit_info.value.code not in (0, None), err
    assert expected in err, err[-1500:]
    assert "Traceback" not in err
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert all(after.get(name) == data for name, data in before.items()), "an existing file was written over"
    assert (run / "DONE").exists() == ("DONE" in before)
    assert json.dumps(sorted(before)) and len(CASES) >= 20
