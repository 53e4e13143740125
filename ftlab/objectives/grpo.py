"""Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath).

For each prompt, G completions are sampled; their rewards minus the group mean (divided by the
group's std unless `scale_rewards` is off, as Dr. GRPO) are every token's advantage. The loss is
PPO's clipped surrogate on the ratio to the sampling policy (ε_low, ε_high as DAPO's clip-higher),
plus β · KL(π‖π_ref) with the k3 estimator, weighted by π/π_old (`kl_estimator="k3_unbiased"`, the
default, the unbiased gradient of the reverse KL, as TRL) or as it is (`"k3"`, the GRPO paper, whose
gradient is that of the forward KL); β = 0 computes no reference at all. Each rollout batch
is used for `updates_per_batch` (μ) optimizer steps; with μ = 1 the sampling policy is the current
one, so its log-probabilities are the detached current ones and cost no extra pass.

Simplifications against the paper: outcome rewards only (no process supervision), the reference
is the model at the start of the run (never refreshed), and one rollout batch per optimizer step
group (no replay across batches).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ftlab.batches import PromptBatch
from ftlab.errors import FTLabError
from ftlab.objectives.base import StepContext
from ftlab.objectives.online import OnlineRL
from ftlab.objectives.rl_math import KLEstimator, LossLevel, aggregate, clipped_policy_loss, kl_penalty, masked_mean
from ftlab.objectives.rl_variants import (
    Advantage,
    advantages,
    global_token_divisor,
    informative_groups,
    overlong_penalty,
    sequence_kl,
    sequence_log_ratio,
)
from ftlab.objectives.rollouts import Rollout, completion_logps
from ftlab.rewards.sources import RewardSource


@dataclass
class GRPOBuffer:
    rollout: Rollout
    advantages: torch.Tensor  # [N]
    old_logps: torch.Tensor | None  # [N, C]; None: the current policy sampled (μ = 1)
    ref_logps: torch.Tensor | None  # [N, C]; None when β = 0


class GRPO(OnlineRL):
    """GRPO with verifiable rewards (functions) or a reward model.

    Args:
        rewards: Reward sources, summed with their weights (FunctionReward, ModelReward).
        num_generations: G, completions sampled per prompt.
        beta: KL coefficient to the reference (0: no reference pass at all).
        epsilon: Lower clip ε_low of the ratio.
        epsilon_high: Upper clip ε_high (default: epsilon).
        scale_rewards: Divide group-centred rewards by the group's std (off: Dr. GRPO).
        loss_level: token (Σ over the batch's completion tokens / their count: DAPO, TRL's bnpo), sequence
            (each sequence's token mean, then the mean: the GRPO paper) or dr_grpo (Σ over completion tokens /
            (N · max_new_tokens): Dr. GRPO). See `rl_math.aggregate`.
        global_tokens: With loss_level token, divide by the completion tokens of every data-parallel rank
            (DAPO's global-token normalisation; TRL's dapo) instead of this rank's own.
        advantage: group (GRPO), rloo (leave-one-out baseline, Ahmadian et al. 2024) or reinforce_pp
            (group mean, then batch normalisation: REINFORCE++-baseline, Hu 2025). scale_rewards applies to group.
        importance_level: token (PPO's per-token ratio), sequence (GSPO's length-normalised sequence ratio,
            Zheng et al. 2025; pair it with loss_level sequence as the paper does) or sequence_sum (the ratio of
            the whole completion's probabilities: RLOO, Ahmadian et al. 2024, and TRL's RLOO).
        kl_in_reward: Take β · Σ_t (log π_old − log π_ref) (k1, summed over the completion) from each reward before
            the advantages, instead of adding β · KL to the loss (RLOO, Ahmadian et al. 2024; TRL's RLOO).
        dynamic_sampling: Drop the groups whose rewards are all equal before the update (DAPO); a batch in which
            every group is such is kept whole (its advantages are all zero).
        overlong_buffer: L_cache of DAPO's soft overlong punishment (0: off): completions longer than
            max_new_tokens − L_cache lose up to 1 reward, linearly.
        updates_per_batch: μ, optimizer steps per rollout batch.
        kl_estimator: `k3_unbiased` (k3 · π/π_old: the unbiased reverse-KL gradient, TRL's default) or
            `k3` (as in the GRPO paper: the forward-KL gradient).
        online: OnlineRL's sampling and update options (max_new_tokens, temperature, top_p, max_grad_norm,
            merge_for_sampling, sampler).
    """

    def __init__(
        self,
        rewards: list[RewardSource],
        num_generations: int = 4,
        beta: float = 0.04,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        scale_rewards: bool = True,
        loss_level: LossLevel = "token",
        updates_per_batch: int = 1,
        global_tokens: bool = False,
        advantage: Advantage = "group",
        importance_level: Literal["token", "sequence", "sequence_sum"] = "token",
        kl_in_reward: bool = False,
        dynamic_sampling: bool = False,
        overlong_buffer: int = 0,
        kl_estimator: KLEstimator = "k3_unbiased",
        **online: Any,
    ) -> None:
        super().__init__(rewards, **online)
        if num_generations < 2:
            raise FTLabError(
                f"GRPO num_generations must be at least 2 to compare within a group, got {num_generations}"
            )
        if importance_level not in ("token", "sequence", "sequence_sum"):
            raise FTLabError(
                f"GRPO importance_level must be 'token', 'sequence' or 'sequence_sum', got {importance_level!r}"
            )
        if kl_estimator not in ("k3", "k3_unbiased"):
            raise FTLabError(f"GRPO kl_estimator must be 'k3' or 'k3_unbiased', got {kl_estimator!r}")
        self.num_generations = num_generations
        self.beta = beta
        self.needs_reference = beta > 0  # type: ignore[misc]  # per instance: β = 0 needs no reference
        self.epsilon = epsilon
        self.epsilon_high = epsilon if epsilon_high is None else epsilon_high
        self.scale_rewards = scale_rewards
        self.loss_level = loss_level
        self.updates_per_batch = updates_per_batch
        self.global_tokens = global_tokens
        self.advantage = advantage
        self.importance_level = importance_level
        self.dynamic_sampling = dynamic_sampling
        self.overlong_buffer = overlong_buffer
        self.kl_estimator = kl_estimator
        self.kl_in_reward = kl_in_reward

    def make_rollouts(self, ctx: StepContext, batch: PromptBatch) -> tuple[GRPOBuffer, dict[str, torch.Tensor]]:
        rollout = self.rollout(ctx, batch, self.num_generations)
        rewards, parts = self.score(rollout)
        scored = rewards  # the reward sources' own, reported as reward (as validation reports it)
        lengths = rollout.completion_mask.sum(-1)
        if self.overlong_buffer > 0:
            rewards = rewards + overlong_penalty(lengths, self.max_new_tokens, self.overlong_buffer)
        graded = rewards  # what dynamic sampling looks at: before any KL penalty, which no two samples share
        penalty: dict[str, torch.Tensor] = {}
        old: torch.Tensor | None = None
        ref: torch.Tensor | None = None
        in_reward = self.kl_in_reward and self.beta > 0
        if in_reward:  # every row's passes, before any is dropped
            sampling, ref = self._passes(ctx, rollout, sampling=True)
            assert sampling is not None and ref is not None
            kl = sequence_kl(sampling, ref, rollout.completion_mask)
            rewards = rewards - self.beta * kl
            penalty["kl"] = kl.sum() / lengths.sum().clamp(min=1)  # per token, as the loss-side KL is logged
            old, ref = (sampling if self.updates_per_batch > 1 else None), None  # no KL term in the loss
        adv = advantages(rewards, self.num_generations, self.advantage, scale=self.scale_rewards)
        kept = torch.ones_like(rewards, dtype=torch.bool)
        if self.dynamic_sampling:
            informative = informative_groups(graded, self.num_generations)
            if bool(informative.any()):
                kept = informative
                rows = informative.nonzero().squeeze(-1)
                rollout, adv = rollout.select(rows), adv[rows]
                old = old[rows] if old is not None else None
        if not in_reward:
            old, ref = self._passes(ctx, rollout, sampling=self.updates_per_batch > 1)
        groups = scored.view(-1, self.num_generations)
        metrics = {
            "reward": scored.mean(),
            "reward_std": ctx.std_over_ranks(scored),  # over every rank's rewards
            "reward_group_std": groups.std(dim=1).mean(),
            "completion_length": lengths.mean(),  # of every sample, before dynamic sampling
            **parts,
            **penalty,
        }
        if rewards is not scored:  # the reward the advantages saw: overlong shaping, KL penalty
            metrics["shaped_reward"] = rewards.mean()
        if self.dynamic_sampling:
            metrics["kept_fraction"] = kept.float().mean()
        return GRPOBuffer(rollout, adv, old, ref), metrics

    def _passes(
        self, ctx: StepContext, rollout: Rollout, sampling: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The sampling policy's per-token log-probs (when `sampling`) and the reference's (when β > 0)."""
        with torch.no_grad():
            old = completion_logps(ctx.model, rollout, entropy=False)[0] if sampling else None
            ref = None
            if self.beta > 0:
                with ctx.reference() as reference:
                    ref = completion_logps(reference, rollout, entropy=False)[0]
        return old, ref

    def minibatches(self, buffer: GRPOBuffer) -> Iterator[GRPOBuffer]:
        for _ in range(self.updates_per_batch):
            yield buffer

    def training_step(self, ctx: StepContext, buffer: GRPOBuffer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps, entropy, _ = completion_logps(ctx.model, buffer.rollout)
        mask = buffer.rollout.completion_mask
        old = buffer.old_logps if buffer.old_logps is not None else logps.detach()
        if self.importance_level != "token":  # GSPO, RLOO: one ratio per sequence, on every token of it
            normalise = self.importance_level == "sequence"
            ratio_logps, ratio_old = sequence_log_ratio(logps, old, mask, normalise), torch.zeros_like(logps)
        else:
            ratio_logps, ratio_old = logps, old
        per_token, clipped = clipped_policy_loss(
            ratio_logps, ratio_old, buffer.advantages, self.epsilon, self.epsilon_high
        )
        metrics = {"clip_fraction": masked_mean(clipped, mask), "entropy": masked_mean(entropy, mask)}
        if buffer.ref_logps is not None:
            kl = kl_penalty(logps, buffer.ref_logps, old, self.kl_estimator, log_ratio=ratio_logps - ratio_old)
            per_token = per_token + self.beta * kl
            metrics["kl"] = masked_mean(kl.detach(), mask)
        tokens = global_token_divisor(mask, ctx) if self.global_tokens and self.loss_level == "token" else None
        loss = aggregate(per_token, mask, self.loss_level, max_length=self.max_new_tokens, tokens=tokens)
        metrics["loss"] = loss.detach()
        return loss, metrics
