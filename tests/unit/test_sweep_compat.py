"""The sweep's pre-launch check refuses exactly what the run's own check refuses: the strategy is the real
Lightning one (DDP or not, finding unused parameters or not) and a method's per-instance capabilities count."""

from __future__ import annotations

import os

import pytest

from ftlab.sweep.compat import Composer, incompatibility
from tests.conftest import REPO

EXP = REPO / "experiments"


@pytest.fixture(scope="module")
def composer() -> Composer:
    return Composer()


def reason(composer: Composer, method: str, *overrides: str) -> str | None:
    args = ["--config", str(EXP / "quickstart.yaml"), "--config", str(EXP / "methods" / method)]
    return incompatibility(composer.parse([*args, *overrides]))


def test_gradual_unfreeze_under_plain_ddp_gets_the_runs_sentence(composer: Composer) -> None:
    expected = (
        "method GradualUnfreeze changes which parameters train during the run; under DDP use "
        "strategy: ddp_find_unused_parameters_true"
    )
    assert reason(composer, "gradual_unfreeze.yaml", "--trainer.strategy=ddp") == expected
    assert reason(composer, "gradual_unfreeze.yaml", "--trainer.strategy=ddp_spawn") == expected
    assert reason(composer, "gradual_unfreeze.yaml", "--trainer.strategy=ddp_find_unused_parameters_true") is None
    assert reason(composer, "gradual_unfreeze.yaml") is None  # quickstart: one process
    assert reason(composer, "lora.yaml", "--trainer.strategy=ddp") is None


def test_class_path_strategies_are_built_as_in_the_run(composer: Composer) -> None:
    ddp = "lightning.pytorch.strategies.DDPStrategy"
    unused = f'--trainer.strategy={{"class_path": "{ddp}", "init_args": {{"find_unused_parameters": true}}}}'
    assert reason(composer, "gradual_unfreeze.yaml", unused) is None
    plain = f'--trainer.strategy={{"class_path": "{ddp}"}}'
    assert "under DDP use" in (reason(composer, "gradual_unfreeze.yaml", plain) or "")
    fsdp = ["--config", str(EXP / "base" / "trainer_fsdp.yaml")]
    sharded = "method LoReFT does not support sharded training (ModelParallelStrategy)"
    assert reason(composer, "reft.yaml", *fsdp) == sharded
    assert reason(composer, "lora.yaml", *fsdp) is None


def test_a_capability_set_per_instance_counts(composer: Composer) -> None:
    packed = "--data.init_args.packing=true"
    assert reason(composer, "reft.yaml", packed) is None  # last: 0 → position ids restart per packed example
    assert reason(composer, "reft.yaml", packed, "--model.method.init_args.last=2") == (
        "method LoReFT cannot train on packed rows; set data packing: false"
    )


def test_a_mixture_answers_with_its_tasks_batch_kind(composer: Composer) -> None:
    mixture = ["--config", str(EXP / "data" / "instructions_text_mixture.yaml")]
    assert reason(composer, "lora.yaml", *mixture) is None  # SFT tasks for the SFT objective
    dpo = ["--config", str(EXP / "objectives" / "dpo.yaml")]
    assert reason(composer, "lora.yaml", *mixture, *dpo) == (
        "objective DPO consumes PreferenceBatch batches but datamodule MixtureDataModule yields SFTBatch batches; "
        "for PreferenceBatch batches compose a data YAML such as "
        f"{os.path.relpath(EXP / 'data' / 'hh_rlhf.yaml')} or "
        f"{os.path.relpath(EXP / 'data' / 'preference_example.yaml')}"
    )
    packed = "--data.init_args.tasks.instructions.init_args.packing=true"
    assert "cannot train on packed rows" in (reason(composer, "prompt.yaml", *mixture, packed) or "")
