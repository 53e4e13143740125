"""GRPO's KL estimators: hand-worked gradients, and TRL's GRPOTrainer._compute_loss on the same log-probs."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from ftlab.objectives.rl_math import aggregate, clipped_policy_loss, kl_penalty


def test_kl_estimators_by_hand() -> None:
    # one token, log π = x = 0, log π_ref = ln 2, π_old = π (μ = 1): k3 = 1 − ln 2 in value for both;
    # d k3/dx = 1 − e^(ref − x) = −1; the ratio-weighted form adds k3 · d(log π)/dx = 1 − ln 2
    for estimator, gradient in (("k3", -1.0), ("k3_unbiased", -math.log(2))):
        x = torch.zeros(1, requires_grad=True)
        kl = kl_penalty(x, torch.tensor([math.log(2)]), x.detach(), estimator)
        kl.sum().backward()
        assert math.isclose(kl.item(), 1 - math.log(2), rel_tol=1e-6)
        assert math.isclose(x.grad.item(), gradient, rel_tol=1e-6)
    # an older sampling policy: π/π_old = e^0.5 scales the value too
    x = torch.zeros(1)
    value = kl_penalty(x, torch.tensor([math.log(2)]), torch.tensor([-0.5]), "k3_unbiased")
    assert math.isclose(value.item(), (1 - math.log(2)) * math.exp(0.5), rel_tol=1e-6)
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_penalty(x, x, x, "k2")  # type: ignore[arg-type]


def _trl_loss(logps: torch.Tensor, inputs: dict, beta: float, unbiased: bool, eps: float) -> torch.Tensor:
    """TRL 1.16's GRPOTrainer._compute_loss with the model pass replaced by the given log-probs."""
    from trl import GRPOTrainer

    accelerator = SimpleNamespace(reduce=lambda x, reduction: x, gather=lambda x: x, gather_for_metrics=lambda x: x)
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=unbiased, delta=None),
        loss_type="bnpo",  # the mean over every completion token of the batch: ftlab's token level
        epsilon_low=eps,
        epsilon_high=eps,
        use_vllm=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        accelerator=accelerator,
        _metrics={"train": defaultdict(list)},
    )
    return GRPOTrainer._compute_loss(stub, None, inputs)


@pytest.mark.parametrize("estimator", ["k3", "k3_unbiased"])
@pytest.mark.parametrize("mu_above_one", [False, True])
def test_grpo_loss_and_gradient_match_trl(estimator: str, mu_above_one: bool) -> None:
    pytest.importorskip("trl")
    gen = torch.Generator().manual_seed(0)
    n, c, beta, eps = 6, 5, 0.04, 0.2
    base = -torch.rand(n, c, generator=gen) * 3
    ref = base + 0.3 * torch.randn(n, c, generator=gen)
    old = base + 0.1 * torch.randn(n, c, generator=gen) if mu_above_one else None
    advantages = torch.randn(n, generator=gen)
    mask = (torch.rand(n, c, generator=gen) > 0.2).float()
    mask[:, 0] = 1

    ours_logps = base.clone().requires_grad_(True)
    sampling = old if old is not None else ours_logps.detach()
    per_token, _ = clipped_policy_loss(ours_logps, sampling, advantages, eps, eps)
    ours = aggregate(per_token + beta * kl_penalty(ours_logps, ref, sampling, estimator), mask, "token")
    ours.backward()

    theirs_logps = base.clone().requires_grad_(True)
    inputs = {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
        "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": torch.zeros(n, c, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "ref_per_token_logps": ref,
    }
    if old is not None:
        inputs["old_per_token_logps"] = old
    theirs = _trl_loss(theirs_logps, inputs, beta, estimator == "k3_unbiased", eps)
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours_logps.grad, theirs_logps.grad, rtol=1e-5, atol=1e-7)
    # the estimators differ in gradient, not only in value
    other = "k3" if estimator == "k3_unbiased" else "k3_unbiased"
    x = base.clone().requires_grad_(True)
    aggregate(kl_penalty(x, ref, x.detach(), other), mask, "token").backward()
    y = base.clone().requires_grad_(True)
    aggregate(kl_penalty(y, ref, y.detach(), estimator), mask, "token").backward()
    assert not torch.allclose(x.grad, y.grad)


def test_unknown_estimator_or_sampler_is_refused_by_name() -> None:
    from ftlab.errors import FTLabError
    from ftlab.objectives import GRPO, PPO
    from ftlab.rewards import FunctionReward, TokenShare

    rewards = [FunctionReward(TokenShare(token_id=5))]
    with pytest.raises(FTLabError, match="GRPO kl_estimator must be 'k3' or 'k3_unbiased', got 'k1'"):
        GRPO(rewards=rewards, kl_estimator="k1")  # type: ignore[arg-type]
    with pytest.raises(FTLabError, match="PPO kl_estimator must be 'k1' or 'k3', got 'k3_unbiased'"):
        PPO(rewards=rewards, kl_estimator="k3_unbiased")  # type: ignore[arg-type]
    with pytest.raises(FTLabError, match="GRPO sampler must be 'generate' or 'static', got 'vllm'"):
        GRPO(rewards=rewards, sampler="vllm")  # type: ignore[arg-type]
    assert GRPO(rewards=rewards).kl_estimator == "k3_unbiased" and PPO(rewards=rewards).kl_estimator == "k1"
