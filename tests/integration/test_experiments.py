"""Every YAML under experiments/ is parsed and instantiated through the real CLI parser."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftlab.cli import FTLabCLI
from ftlab.module import FineTuneModule
from tests.catalogue import YAML_COMPANIONS
from tests.conftest import REPO

EXPERIMENTS = REPO / "experiments"
QUICKSTART = EXPERIMENTS / "quickstart.yaml"
# study files (experiments/sweeps) are not fit configs: tests/unit/test_sweep_study.py composes them
ALL = sorted(p.relative_to(EXPERIMENTS).as_posix() for p in EXPERIMENTS.rglob("*.yaml") if "sweeps" not in p.parts)
COMPANIONS = YAML_COMPANIONS


def test_every_component_has_its_yaml() -> None:
    for name in ("methods/full.yaml", "methods/freeze.yaml", "methods/lora.yaml", "objectives/sft.yaml"):
        assert name in ALL


def test_every_method_has_its_yaml_and_catalogue_row() -> None:
    import ftlab.methods
    from tests.catalogue import METHODS

    built = {type(factory()).__name__ for factory in METHODS.values()}
    texts = [(EXPERIMENTS / name).read_text() for name in ALL if name.startswith("methods/")]
    for name in ftlab.methods.__all__:
        if name == "Method":
            continue
        assert name in built, f"{name} has no row in tests/catalogue.py"
        assert any(f"class_path: ftlab.methods.{name}\n" in text for text in texts), f"{name} has no YAML"


@pytest.mark.parametrize("name", ALL)
def test_yaml_instantiates(name: str, tiny_llama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    path = EXPERIMENTS / name
    companions = [EXPERIMENTS / c for c in COMPANIONS.get(name, [])]
    text = "".join(p.read_text() for p in [path, *companions])
    if "../shared/data" in text and not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip("the shared offline data folder is not beside this checkout")
    if "ftlab.chain.FromRun" in text:
        pytest.skip("it starts from the quickstart's finished run: tests/integration/test_readme.py fits both in order")
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
