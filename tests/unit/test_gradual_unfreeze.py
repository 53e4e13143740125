"""GradualUnfreeze: depth groups, the schedule as a function of the step, discriminative rates."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftlab.errors import FTLabError
from ftlab.methods import GradualUnfreeze
from ftlab.module import FineTuneModule
from ftlab.objectives import SFT
from ftlab.schedules import SlantedTriangular


@pytest.fixture
def llama(tiny_llama):
    return tiny_llama.load_model(AutoModelForCausalLM)


def test_groups_run_from_the_top_down(llama) -> None:
    groups = GradualUnfreeze().groups(llama)
    assert groups[0] == ["model.norm.weight", "lm_head.weight"]
    assert all(n.startswith("model.layers.1.") for n in groups[1])
    assert all(n.startswith("model.layers.0.") for n in groups[2])
    assert groups[3] == ["model.embed_tokens.weight"]
    assert len(GradualUnfreeze(embeddings=False).groups(llama)) == 3


def test_schedule_is_a_function_of_step_or_epoch(llama) -> None:
    by_step = GradualUnfreeze(every_n_steps=2)
    assert [by_step.unfrozen(step, 0, total=4) for step in range(9)] == [1, 1, 2, 2, 3, 3, 4, 4, 4]
    by_epoch = GradualUnfreeze(every_n_epochs=1, start_groups=2)
    assert [by_epoch.unfrozen(0, epoch, total=4) for epoch in range(4)] == [2, 3, 4, 4]
    model = by_step.apply(llama)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"model.norm.weight", "lm_head.weight"}
    assert set(by_step.trainable_parameters(model)) == {n for n, _ in model.named_parameters()}
    by_step.set_stage(model, 2)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "model.norm.weight",
        "lm_head.weight",
        *[n for n, _ in model.named_parameters() if ".layers.1." in n],
    }


def test_discriminative_rates_divide_by_the_decay_per_group(tiny_llama) -> None:
    module = FineTuneModule(
        tiny_llama, GradualUnfreeze(lr_decay=2.6), SFT(), optimizer=lambda p: torch.optim.AdamW(p, lr=0.1)
    )
    module.configure_model()
    optimizer = module.configure_optimizers()
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    for k in range(4):
        assert math.isclose(rates[f"depth{k}"], 0.1 / 2.6**k, rel_tol=1e-12)
    # every parameter that will ever train is in the optimizer from step 0
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in module.model.parameters()}


def test_bad_options() -> None:
    with pytest.raises(FTLabError, match="at least 1"):
        GradualUnfreeze(every_n_steps=0)


def test_slanted_triangular_by_hand() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = SlantedTriangular(opt, total_steps=20, cut_frac=0.1, ratio=32)
    lrs = []
    for _ in range(21):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # cut = 2: rise over steps 0..2, then fall over 18 steps; lr = (1 + p·31) / 32
    expected = {0: 1 / 32, 1: 16.5 / 32, 2: 1.0, 11: 16.5 / 32, 20: 1 / 32}
    for step, value in expected.items():
        assert math.isclose(lrs[step], value, rel_tol=1e-9), step
