"""Loss levels, baselines, GSPO's ratio, dynamic sampling and overlong shaping on numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ftlab.objectives.base import StepContext
from ftlab.objectives.rl_math import aggregate
from ftlab.objectives.rl_variants import (
    advantages,
    global_token_divisor,
    informative_groups,
    overlong_penalty,
    reinforce_pp_advantages,
    rloo_advantages,
    sequence_kl,
    sequence_log_ratio,
)

PER_TOKEN = torch.tensor([[1.0, 3.0, 0.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_loss_levels_by_hand() -> None:
    # token: (1 + 3 + 4) / 3 tokens; sequence: ((1 + 3)/2 + 4/1) / 2; dr_grpo: (1 + 3 + 4) / (2 rows · 5)
    assert math.isclose(aggregate(PER_TOKEN, MASK, "token").item(), 8 / 3, rel_tol=1e-6)
    assert math.isclose(aggregate(PER_TOKEN, MASK, "sequence").item(), 3.0, rel_tol=1e-6)
    assert math.isclose(aggregate(PER_TOKEN, MASK, "dr_grpo", max_length=5).item(), 0.8, rel_tol=1e-6)
    # a given divisor (the global token count / ranks) replaces the batch's 3 tokens
    assert math.isclose(aggregate(PER_TOKEN, MASK, "token", tokens=torch.tensor(4.0)).item(), 2.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="max_length"):
        aggregate(PER_TOKEN, MASK, "dr_grpo")
    with pytest.raises(ValueError, match="unknown loss level"):
        aggregate(PER_TOKEN, MASK, "mean")  # type: ignore[arg-type]


def test_global_token_divisor_in_one_process_is_the_token_count() -> None:
    ctx = StepContext(model=None, reference=None)  # type: ignore[arg-type]
    assert global_token_divisor(MASK, ctx).item() == 3.0


def test_rloo_by_hand() -> None:
    # group (1, 0, 0): 1 − 0 = 1, 0 − ½ = −½, −½; group (2, 2, 2): all 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    torch.testing.assert_close(rloo_advantages(rewards, 3), torch.tensor([1.0, -0.5, -0.5, 0.0, 0.0, 0.0]))
    # G/(G−1) times the group-centred reward
    torch.testing.assert_close(advantages(rewards, 3, "rloo"), 1.5 * advantages(rewards, 3, "group", scale=False))


def test_reinforce_pp_by_hand() -> None:
    # group-centred: (½, −½, 1, −1): mean 0, sample std sqrt((¼ + ¼ + 1 + 1) / 3) = sqrt(5/6)
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0])
    expected = torch.tensor([0.5, -0.5, 1.0, -1.0]) / math.sqrt(5 / 6)
    torch.testing.assert_close(reinforce_pp_advantages(rewards, 2), expected)
    # group size 1: the rewards whitened over the batch: mean 5/4, std sqrt((1/16 + 25/16 + 49/16 + 1/16) / 3)
    std = math.sqrt((1 + 25 + 49 + 1) / 16 / 3)
    torch.testing.assert_close(reinforce_pp_advantages(rewards, 1), (rewards - 1.25) / std, rtol=1e-6, atol=1e-6)


def test_gspo_sequence_ratio_by_hand() -> None:
    # row 0: log-ratios (0.2, 0.4) over 2 tokens -> 0.3 on each token; row 1: 0.6 over its one token
    logps = torch.tensor([[0.2, 0.4, 9.0], [0.6, 9.0, 9.0]])
    ratio = sequence_log_ratio(logps, torch.zeros_like(logps), MASK)
    torch.testing.assert_close(ratio, torch.tensor([[0.3, 0.3, 0.3], [0.6, 0.6, 0.6]]))


def test_rloo_whole_sequence_ratio_and_reward_kl_by_hand() -> None:
    # the summed log-ratio: row 0 0.2 + 0.4 = 0.6 on each token, row 1 0.6 (padding ignored)
    logps = torch.tensor([[0.2, 0.4, 9.0], [0.6, 9.0, 9.0]])
    ratio = sequence_log_ratio(logps, torch.zeros_like(logps), MASK, normalise=False)
    torch.testing.assert_close(ratio, torch.tensor([[0.6, 0.6, 0.6], [0.6, 0.6, 0.6]]))
    # k1 summed over the completion: (−1 − −1.5) + (−2 − −1) = −0.5; (−0.5 − −2) = 1.5; it can be negative
    sampling = torch.tensor([[-1.0, -2.0, 5.0], [-0.5, 5.0, 5.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-2.0, 0.0, 0.0]])
    torch.testing.assert_close(sequence_kl(sampling, ref, MASK), torch.tensor([-0.5, 1.5]))


def test_dynamic_sampling_keeps_groups_with_varied_rewards() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    assert informative_groups(rewards, 2).tolist() == [False, False, True, True, False, False]


def test_overlong_penalty_by_hand() -> None:
    # L_max 10, L_cache 4: free up to 6, then (6 − |y|)/4 up to 10, −1 beyond
    lengths = torch.tensor([3, 6, 7, 10, 12])
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4), torch.tensor([0.0, 0.0, -0.25, -1.0, -1.0]))
