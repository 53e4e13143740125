"""PPO for language models from rewards (Schulman et al., 2017; as used for RLHF by Ziegler et al., 2019
and Ouyang et al., 2022).

One completion per prompt is sampled; the score of the reward sources is given at the completion's
last token, and every token pays −β · (log π_old − log π_ref) (the per-token KL penalty of the
InstructGPT recipe; β fixed, or adaptive toward a target KL). A value head on the shared backbone
estimates each token's value; GAE(γ, λ) gives advantages (whitened) and returns; then `epochs` passes
of shuffled minibatches update the policy with the clipped surrogate and the value head with the
clipped value loss. A separate critic network is not offered here: the value head shares the policy's
backbone (and its method's trainable weights).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ftlab.batches import PromptBatch
from ftlab.errors import FTLabError
from ftlab.models.heads import ClassifierHead
from ftlab.objectives.base import StepContext
from ftlab.objectives.online import OnlineRL
from ftlab.objectives.rl_math import (
    AdaptiveKL,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    k3_kl,
    masked_mean,
    masked_whiten,
)
from ftlab.objectives.rollouts import Rollout, completion_logps
from ftlab.rewards.sources import RewardSource


@dataclass
class PPOBuffer:
    rollout: Rollout
    old_logps: torch.Tensor  # [N, C]
    old_values: torch.Tensor  # [N, C]
    advantages: torch.Tensor  # [N, C]
    returns: torch.Tensor  # [N, C]

    def select(self, rows: torch.Tensor) -> PPOBuffer:
        return PPOBuffer(
            self.rollout.select(rows),
            self.old_logps[rows],
            self.old_values[rows],
            self.advantages[rows],
            self.returns[rows],
        )


class PPO(OnlineRL):
    """PPO with a value head, GAE and a per-token KL penalty to the reference.

    Args:
        rewards: Reward sources, summed with their weights (a reward model and/or functions).
        kl_coef: β of the per-token KL penalty (0: no reference pass).
        kl_target: If set, adapt β toward this KL per sequence (Ziegler et al.); None keeps β fixed.
        kl_horizon: Samples over which the adaptive β reacts.
        gamma: Discount γ.
        lam: GAE λ.
        clip: Policy ratio clip ε.
        value_clip: Value clip around the old values.
        vf_coef: Weight of the value loss.
        epochs: Passes over each rollout buffer.
        minibatch_size: Sequences per update (default: the whole buffer).
        whiten_advantages: Normalise advantages over the buffer.
        kl_estimator: Per-token KL of the reward penalty: `k1` (log π_old − log π_ref, InstructGPT) or
            `k3` (Schulman's k3, never negative). A reward carries no gradient, so no ratio weighting applies.
        online: OnlineRL's sampling and update options (max_new_tokens, temperature, top_p, max_grad_norm,
            merge_for_sampling, sampler).
    """

    has_head: ClassVar[bool] = True

    def __init__(
        self,
        rewards: list[RewardSource],
        kl_coef: float = 0.05,
        kl_target: float | None = None,
        kl_horizon: float = 10000.0,
        gamma: float = 1.0,
        lam: float = 0.95,
        clip: float = 0.2,
        value_clip: float = 0.2,
        vf_coef: float = 0.1,
        epochs: int = 4,
        minibatch_size: int | None = None,
        whiten_advantages: bool = True,
        kl_estimator: Literal["k1", "k3"] = "k1",
        **online: Any,
    ) -> None:
        super().__init__(rewards, **online)
        self.kl = AdaptiveKL(kl_coef, kl_target, kl_horizon) if kl_target is not None else None
        self.kl_coef = kl_coef
        self.needs_reference = kl_coef > 0  # type: ignore[misc]
        self.gamma, self.lam = gamma, lam
        self.clip, self.value_clip, self.vf_coef = clip, value_clip, vf_coef
        self.epochs = epochs
        self.minibatch_size = minibatch_size
        self.whiten_advantages = whiten_advantages
        if kl_estimator not in ("k1", "k3"):
            raise FTLabError(f"PPO kl_estimator must be 'k1' or 'k3', got {kl_estimator!r}")
        self.kl_estimator = kl_estimator
        self.value_head: nn.Module | None = None

    def setup_model(self, model: nn.Module) -> None:
        if self.value_head is None:
            hidden = model.config.get_text_config().hidden_size
            self.value_head = ClassifierHead(hidden, 1).to(next(model.parameters()).device)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = next(self.value_head.parameters())
        return self.value_head(hidden.to(weight.dtype)).squeeze(-1).float()

    def make_rollouts(self, ctx: StepContext, batch: PromptBatch) -> tuple[PPOBuffer, dict[str, torch.Tensor]]:
        rollout = self.rollout(ctx, batch, 1)
        mask = rollout.completion_mask
        scores, parts = self.score(rollout)
        with torch.no_grad():
            old_logps, _, hidden = completion_logps(ctx.model, rollout, hidden=True, entropy=False)
            old_values = self.values(hidden) * mask
            kl = torch.zeros_like(old_logps)
            if self.needs_reference:
                with ctx.reference() as reference:
                    ref_logps = completion_logps(reference, rollout, entropy=False)[0]
                    kl = (old_logps - ref_logps if self.kl_estimator == "k1" else k3_kl(old_logps, ref_logps)) * mask
        coef = self.kl.value if self.kl is not None else self.kl_coef
        rewards = -coef * kl
        last = (mask.sum(-1).long() - 1).clamp(min=0)  # the score arrives with the last completion token
        rewards[torch.arange(len(last)), last] += scores
        advantages, returns = gae(rewards, old_values, mask, self.gamma, self.lam)
        if self.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        kl_per_sequence = kl.sum(-1).mean()
        if self.kl is not None:
            self.kl.update(float(kl_per_sequence), len(last))
        metrics = {
            "reward": scores.mean(),
            "reward_std": ctx.std_over_ranks(scores),  # over every rank's scores
            "kl": kl_per_sequence,
            "kl_coef": torch.tensor(coef),
            "completion_length": mask.sum(-1).mean(),
            **parts,
        }
        return PPOBuffer(rollout, old_logps, old_values, advantages, returns), metrics

    def minibatches(self, buffer: PPOBuffer) -> Iterator[PPOBuffer]:
        n = buffer.old_logps.shape[0]
        size = self.minibatch_size or n
        for _ in range(self.epochs):
            order = torch.randperm(n, device=buffer.old_logps.device)
            for start in range(0, n, size):
                yield buffer.select(order[start : start + size])

    def training_step(self, ctx: StepContext, buffer: PPOBuffer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps, entropy, hidden = completion_logps(ctx.model, buffer.rollout, hidden=True)
        values = self.values(hidden)
        mask = buffer.rollout.completion_mask
        policy, clipped = clipped_policy_loss(logps, buffer.old_logps, buffer.advantages, self.clip, self.clip)
        value = clipped_value_loss(values, buffer.old_values, buffer.returns, self.value_clip)
        policy_loss, value_loss = masked_mean(policy, mask), masked_mean(value, mask)
        loss = policy_loss + self.vf_coef * value_loss
        return loss, {
            "loss": loss.detach(),
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "clip_fraction": masked_mean(clipped, mask),
            "entropy": masked_mean(entropy, mask),
            "approx_kl": masked_mean(0.5 * (logps.detach() - buffer.old_logps) ** 2, mask),
            "explained_variance": explained_variance(values.detach(), buffer.returns, mask),
        }
