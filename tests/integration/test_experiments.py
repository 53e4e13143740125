"""Every YAML under experiments/ is parsed and instantiated through the real CLI parser."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftlab.cli import FTLabCLI
from ftlab.module import FineTuneModule
from tests.conftest import REPO

EXPERIMENTS = REPO / "experiments"
QUICKSTART = EXPERIMENTS / "quickstart.yaml"
# study files (experiments/sweeps) are not fit configs: tests/unit/test_sweep_study.py composes them
ALL = sorted(p.relative_to(EXPERIMENTS).as_posix() for p in EXPERIMENTS.rglob("*.yaml") if "sweeps" not in p.parts)
# an objective needs its kind of data, and preference data an objective that reads it
COMPANIONS = {
    "objectives/classification.yaml": ["data/sst2.yaml"],
    "objectives/dpo.yaml": ["data/preference_example.yaml"],
    "objectives/reward.yaml": ["data/preference_example.yaml"],
    "data/preference_example.yaml": ["objectives/dpo.yaml"],
    "data/hh_rlhf.yaml": ["objectives/reward.yaml"],
    "data/gsm8k.yaml": ["objectives/grpo.yaml"],
    "data/synthetic_prompts.yaml": ["objectives/grpo.yaml"],
    "objectives/grpo.yaml": ["data/synthetic_prompts.yaml"],
    "objectives/ppo.yaml": ["data/synthetic_prompts.yaml"],
    "objectives/ipo.yaml": ["data/preference_example.yaml"],
    "objectives/kto.yaml": ["data/feedback_example.yaml"],
    "data/feedback_example.yaml": ["objectives/kto.yaml"],
    "objectives/simpo.yaml": ["data/preference_example.yaml"],
    "objectives/orpo.yaml": ["data/preference_example.yaml"],
    **{
        f"objectives/{name}.yaml": ["data/synthetic_prompts.yaml", "objectives/grpo.yaml"]
        for name in ("dr_grpo", "dapo", "gspo", "rloo")
    },
}


def test_every_component_has_its_yaml() -> None:
    for name in ("methods/full.yaml", "methods/freeze.yaml", "methods/lora.yaml", "objectives/sft.yaml"):
        assert name in ALL


@pytest.mark.parametrize("name", ALL)
def test_yaml_instantiates(name: str, tiny_llama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    path = EXPERIMENTS / name
    companions = [EXPERIMENTS / c for c in COMPANIONS.get(name, [])]
    text = "".join(p.read_text() for p in [path, *companions])
    if "../shared/data" in text and not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip("the shared offline data folder is not beside this checkout")
    extra: list[str] = []
    if "ftlab.models.Pretrained" in text:  # point the real-model template at a local saved model
        extra.append(f"--model.backbone.init_args.name_or_path={tiny_llama.model_dir(AutoModelForCausalLM)}")
    if "accelerator: gpu" in text and not torch.cuda.is_available():
        extra += ["--trainer.accelerator=cpu", "--trainer.precision=32-true"]
    cli = FTLabCLI(
        args=[
            "--config",
            str(QUICKSTART),
            *[a for c in companions for a in ("--config", str(c))],
            "--config",
            str(path),
            f"--trainer.default_root_dir={tmp_path}",
            *extra,
        ],
        run=False,
    )
    assert isinstance(cli.model, FineTuneModule)
    assert cli.model.objective.batch_type is cli.datamodule.batch_type
    assert str(cli.trainer.default_root_dir) == str(tmp_path)
    for logger in cli.trainer.loggers:
        assert str(logger.save_dir).startswith(str(tmp_path)), type(logger).__name__
