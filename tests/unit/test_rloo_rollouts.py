"""RLOO's rollout side on numbers worked out by hand: the KL to the reference is taken from each reward (β times
the summed k1 estimate) before the leave-one-out advantages, and no KL term reaches the loss."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import pytest
import torch

from ftlab.objectives import GRPO, StepContext
from ftlab.objectives.rollouts import Rollout
from ftlab.rewards import FunctionReward

MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
SAMPLING = torch.tensor([[-1.0, -1.0], [-2.0, 9.0], [-1.0, -1.0], [-1.0, -1.0]])
REFERENCE = torch.tensor([[-2.0, -1.0], [-1.0, 0.0], [-1.0, -1.0], [-1.5, -1.5]])
REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.5])


def four_rollouts() -> Rollout:
    """Two prompts × two samples, with MASK's completion tokens (their ids do not matter here)."""
    return Rollout(
        sequences=torch.zeros(4, 3, dtype=torch.long),
        attention_mask=torch.ones(4, 3),
        completion_mask=MASK,
        prompt_length=1,
        prompts=[""] * 4,
        completions=[""] * 4,
        completion_ids=[[]] * 4,
    )


@contextmanager
def reference():
    yield "reference"


@pytest.mark.parametrize("updates", [1, 2])
def test_kl_in_the_reward_before_leave_one_out_advantages(updates: int, monkeypatch: pytest.MonkeyPatch) -> None:
    objective = GRPO(
        [FunctionReward(function=lambda completions, **_: [0.0] * len(completions))],
        num_generations=2,
        max_new_tokens=2,
        beta=0.5,
        advantage="rloo",
        importance_level="sequence_sum",
        loss_level="sequence",
        kl_in_reward=True,
        updates_per_batch=updates,
    )
    rollout = four_rollouts()
    logps = {"policy": SAMPLING, "reference": REFERENCE}
    monkeypatch.setattr(objective, "rollout", lambda ctx, batch, g: rollout)
    monkeypatch.setattr(objective, "score", lambda r: (REWARDS, {}))
    monkeypatch.setattr("ftlab.objectives.grpo.completion_logps", lambda model, r, **_: (logps[model], None, None))
    ctx: Any = StepContext(model="policy", reference=reference)  # type: ignore[arg-type]
    buffer, metrics = objective.make_rollouts(ctx, batch=None)  # type: ignore[arg-type]
    # summed k1: 1 + 0 = 1, −2 + 1 = −1 (its padding ignored), 0, 0.5 + 0.5 = 1; rewards − ½ · KL = ½, ½, ½, 0
    # leave-one-out with G = 2: each minus its sibling: 0, 0 (the KL evened the first group out), ½, −½
    torch.testing.assert_close(buffer.advantages, torch.tensor([0.0, 0.0, 0.5, -0.5]))
    assert buffer.ref_logps is None  # no KL term in the loss
    assert (buffer.old_logps is None) == (updates == 1)  # μ = 1: the current policy is the sampling one
    if updates == 2:
        torch.testing.assert_close(buffer.old_logps, SAMPLING)
    torch.testing.assert_close(metrics["kl"], torch.tensor(1 / 7))  # (1 − 1 + 0 + 1) over 7 completion tokens
    torch.testing.assert_close(metrics["reward"], torch.tensor(0.5))  # the reward sources' own, as validation's
    torch.testing.assert_close(metrics["shaped_reward"], torch.tensor(0.375))


def test_dynamic_sampling_judges_the_rewards_before_the_kl_penalty(monkeypatch: pytest.MonkeyPatch) -> None:
    objective = GRPO(
        [FunctionReward(function=lambda completions, **_: [0.0] * len(completions))],
        num_generations=2,
        max_new_tokens=2,
        beta=0.5,
        advantage="rloo",
        kl_in_reward=True,
        dynamic_sampling=True,
    )
    rollout = four_rollouts()
    logps = {"policy": SAMPLING, "reference": REFERENCE}
    # the first group's rewards are equal (no signal), though its KL penalties differ (1 and −1)
    monkeypatch.setattr(objective, "rollout", lambda ctx, batch, g: rollout)
    monkeypatch.setattr(objective, "score", lambda r: (torch.tensor([1.0, 1.0, 0.0, 1.0]), {}))
    monkeypatch.setattr("ftlab.objectives.grpo.completion_logps", lambda model, r, **_: (logps[model], None, None))
    ctx: Any = StepContext(model="policy", reference=reference)  # type: ignore[arg-type]
    buffer, metrics = objective.make_rollouts(ctx, batch=None)  # type: ignore[arg-type]
    assert metrics["kept_fraction"].item() == 0.5 and buffer.rollout.completion_mask.shape[0] == 2
