"""The arithmetic of online RL objectives, as pure functions on tensors (hand-checked in the tests).

Shapes: N sequences (B prompts × G samples, samples of a prompt adjacent), C completion tokens;
`mask` [N, C] is 1 on completion tokens up to and including the first EOS.
"""

from __future__ import annotations

from typing import Literal

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (a scalar)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the masked positions (population std), zero elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages (Shao et al., 2024): each reward minus its group's mean, divided by the group's
    sample standard deviation (+eps) when `scale` (Dr. GRPO, Liu et al. 2025, does not divide). [N] -> [N]."""
    groups = rewards.view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def clipped_policy_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO surrogate −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A), ρ = exp(logp − old_logp).

    logps, old_logps [N, C]; advantages [N] (one per sequence) or [N, C]. Returns (loss [N, C],
    clipped [N, C] as 0/1: where the clipped term was the one taken)."""
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logps - old_logps)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).float()


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π‖π_ref) per token: exp(ref − logp) − (ref − logp) − 1 ≥ 0."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


KLEstimator = Literal["k3", "k3_unbiased"]


def kl_penalty(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    old_logps: torch.Tensor,
    estimator: KLEstimator,
    log_ratio: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token KL penalty of GRPO's loss on tokens sampled from π_old.

    `k3`: k3 as it is (the GRPO paper). Its value estimates KL(π‖π_ref), but with π_old = π its expected
    gradient is E_π[(1 − π_ref/π) ∇log π] = −Σ π_ref ∇log π, that of the forward KL(π_ref‖π).
    `k3_unbiased`: k3 · π/π_old (TRL's `use_bias_correction_kl`, its default). The ratio is 1 in value
    when π_old is the current policy (μ = 1), so the logged KL is the same; its gradient adds
    k3 · ∇log π, which makes the whole the unbiased gradient of the reverse KL(π‖π_ref).
    `log_ratio`: the importance log-ratio of the policy loss when it is not the token's log π − log π_old
    (GSPO's sequence-level ratio); the correction uses the same ratio as the loss, as TRL does."""
    kl = k3_kl(logps, ref_logps)
    if estimator == "k3_unbiased":
        kl = kl * torch.exp(logps - old_logps if log_ratio is None else log_ratio)
    elif estimator != "k3":
        raise ValueError(f"kl_estimator must be 'k3' or 'k3_unbiased', got {estimator!r}")
    return kl


LossLevel = Literal["token", "sequence", "dr_grpo"]
"""How a token-level RL loss becomes one number; see `aggregate`."""


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    level: LossLevel,
    max_length: int | None = None,
    tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss over a batch of N sequences from per-token losses [N, C]:

    - `token`: Σ_{i,t} ℓ_it m_it / Σ_{i,t} m_it, the mean over every completion token of the batch (DAPO,
      Yu et al. 2025; TRL's `bnpo`). `tokens`, when given, replaces the divisor Σ m (global-token
      normalisation over data-parallel ranks: see `global_token_divisor`; TRL's `dapo`).
    - `sequence`: (1/N) Σ_i (Σ_t ℓ_it m_it / Σ_t m_it), each sequence's token mean, then their mean (the GRPO
      paper, Shao et al. 2024; TRL's `grpo`).
    - `dr_grpo`: Σ_{i,t} ℓ_it m_it / (N · max_length), a constant divisor with max_length the longest
      completion allowed (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-like training"; TRL's `dr_grpo`).
    """
    if level == "token":
        divisor = mask.sum().clamp(min=1) if tokens is None else tokens.clamp(min=1)
        return (per_token * mask).sum() / divisor
    if level == "dr_grpo":
        if max_length is None:
            raise ValueError("the dr_grpo loss level needs max_length, the longest completion allowed")
        return (per_token * mask).sum() / (per_token.shape[0] * max_length)
    if level == "sequence":
        per_sequence = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_sequence.mean()
    raise ValueError(f"unknown loss level {level!r}: use token, sequence or dr_grpo")


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over completion tokens.

    rewards, values, mask [N, C]; the value after the last real token is 0 (the episode ends).
    δ_t = r_t + γ V_{t+1} − V_t, A_t = δ_t + γλ A_{t+1}; returns (advantages, returns = A + V), zero
    outside the mask."""
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * m
        # past the end of a sequence nothing flows back
        next_value = torch.where(m > 0, values[:, t], torch.zeros_like(next_value))
        next_advantage = torch.where(m > 0, advantage, torch.zeros_like(next_advantage))
    return advantages, (advantages + values) * mask


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> torch.Tensor:
    """Per-token ½ max((V − R)², (clip(V, V_old ± c) − R)²), PPO's clipped value loss."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var(R − V) / Var(R) over the masked positions (1 is a perfect critic, ≤ 0 no better than a constant)."""
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return 1 - var_residual / var_returns.clamp(min=1e-8)


class AdaptiveKL:
    """The adaptive KL coefficient of Ziegler et al. (2019): β ← β · (1 + clip(KL/target − 1, ±0.2) · n/horizon).

    Args:
        init: Starting coefficient.
        target: The KL per sequence to hold.
        horizon: How many samples the coefficient takes to react.
    """

    def __init__(self, init: float = 0.05, target: float = 6.0, horizon: float = 10000.0) -> None:
        self.value = init
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, n: int) -> float:
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.value *= 1 + error * n / self.horizon
        return self.value
