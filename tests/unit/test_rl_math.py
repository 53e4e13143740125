"""Online RL arithmetic against numbers worked out by hand."""

import math

import pytest
import torch

from ftlab.objectives.rl_math import (
    AdaptiveKL,
    aggregate,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    group_advantages,
    k3_kl,
    masked_whiten,
)


def test_group_advantages_by_hand() -> None:
    # two groups of 3: (1, 0, 0) has mean 1/3 and sample std sqrt(1/3); (2, 2, 2) has std 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, 0]) / torch.tensor([std + 1e-4] * 3 + [1e-4] * 3)
    torch.testing.assert_close(group_advantages(rewards, 3), expected)
    # Dr. GRPO: no division by the std
    torch.testing.assert_close(
        group_advantages(rewards, 3, scale=False), torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, 0])
    )


def test_clipped_policy_loss_by_hand() -> None:
    # ρ = e^{ln 1.5} = 1.5 with A = +1: clip at 1.2 -> loss −1.2, clipped; ρ = 0.5 with A = +1: −0.5 (not clipped);
    # ρ = 0.5 with A = −1: min(−0.5, −0.8) = −0.8 -> loss 0.8, clipped
    logps = torch.log(torch.tensor([[1.5, 0.5, 0.5]]))
    loss, clipped = clipped_policy_loss(logps, torch.zeros(1, 3), torch.tensor([[1.0, 1.0, -1.0]]), 0.2, 0.2)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5, 0.8]]))
    assert clipped.tolist() == [[1.0, 0.0, 1.0]]
    # a sequence-level advantage broadcasts over tokens; at ρ = 1 the loss is −A
    loss, _ = clipped_policy_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([2.0, -1.0]), 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor([[-2.0, -2.0], [1.0, 1.0]]))


def test_k3_kl_by_hand() -> None:
    # δ = ref − logp = ln 2: e^δ − δ − 1 = 1 − ln 2; δ = 0 gives 0
    kl = k3_kl(torch.tensor([0.0, -1.0]), torch.tensor([math.log(2), -1.0]))
    torch.testing.assert_close(kl, torch.tensor([1 - math.log(2), 0.0]))


def test_token_and_sequence_aggregation() -> None:
    per_token = torch.tensor([[1.0, 3.0, 0.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert math.isclose(aggregate(per_token, mask, "token").item(), (1 + 3 + 4) / 3, rel_tol=1e-6)
    assert math.isclose(aggregate(per_token, mask, "sequence").item(), ((1 + 3) / 2 + 4) / 2, rel_tol=1e-6)


def test_gae_by_hand() -> None:
    # one sequence of 2 tokens (+1 padding): r = (0, 1), V = (0.5, 0.25), γ = 0.9, λ = 0.8
    # δ_1 = 1 + 0 − 0.25 = 0.75 -> A_1 = 0.75; δ_0 = 0 + 0.9·0.25 − 0.5 = −0.275 -> A_0 = −0.275 + 0.72·0.75 = 0.265
    rewards = torch.tensor([[0.0, 1.0, 7.0]])
    values = torch.tensor([[0.5, 0.25, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.265, 0.75, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.765, 1.0, 0.0]]))
    # γ = λ = 1: advantages are the return-to-go minus the value
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.75, 0.0]]))


def test_clipped_value_loss_by_hand() -> None:
    # V moved from 0 to 1 with clip 0.2: clipped V = 0.2; R = 0 -> max(1, 0.04) / 2 = 0.5
    # R = 1 -> max(0, 0.64) / 2 = 0.32 (the clipped value is further from the return)
    loss = clipped_value_loss(torch.tensor([1.0, 1.0]), torch.zeros(2), torch.tensor([0.0, 1.0]), 0.2)
    torch.testing.assert_close(loss, torch.tensor([0.5, 0.32]))


def test_whiten_and_explained_variance() -> None:
    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4, rtol=0)
    returns = torch.tensor([[1.0, 3.0, 0.0]])
    assert explained_variance(returns, returns, mask).item() == 1.0
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == 0.0


def test_adaptive_kl_by_hand() -> None:
    controller = AdaptiveKL(init=0.1, target=6.0, horizon=100.0)
    # KL 12 is twice the target: error clipped to 0.2; 10 samples -> β · (1 + 0.2 · 0.1) = 0.102
    assert math.isclose(controller.update(12.0, 10), 0.102)
    # KL 3 is half the target: error −0.2 -> ×0.98
    assert math.isclose(controller.update(3.0, 10), 0.102 * 0.98)


def test_reward_std_is_pooled_over_ranks() -> None:
    from ftlab.objectives.base import StepContext

    class TwoRanks(StepContext):
        """Rank 0's view of an all-reduce with a rank 1 holding `other`'s n, Σx, Σx²."""

        other = torch.tensor([3.0, 1.0, 5.0], dtype=torch.float64)

        def sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
            o = self.other
            return value + torch.stack([o.new_tensor(3.0), o.sum(), o.square().sum()])

    mine = torch.tensor([0.0, 2.0])
    # pooled values 0, 2, 3, 1, 5: mean 2.2, Σ(x − 2.2)² = 4.84 + 0.04 + 0.64 + 1.44 + 7.84 = 14.8, s² = 14.8 / 4
    assert TwoRanks(None, None, ranks=2).std_over_ranks(mine).item() == pytest.approx(3.7**0.5, abs=1e-6)
    one = StepContext(None, None)
    assert one.std_over_ranks(mine).item() == pytest.approx(torch.tensor([0.0, 2.0]).std().item())
    assert one.std_over_ranks(torch.tensor([4.0])).item() == 0.0  # a single value: no spread
