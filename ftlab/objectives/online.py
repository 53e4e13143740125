"""What GRPO and PPO share: sampling settings, reward sources, the timed rollout, validation by reward.

An online objective samples completions of a batch's prompts (`rollout`), scores them with its reward
sources (`score`) and, in validation, reports the mean reward of one greedy-free sample per prompt.
The seconds spent sampling the last rollout batch are kept in `generate_seconds`; the module divides
them by the whole step's time to log `perf/generation_share`. Gradient clipping of every update is
`max_grad_norm`, applied by the module (the one place that clips an objective's own optimizer steps).
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import torch

from ftlab.batches import PromptBatch
from ftlab.errors import FTLabError
from ftlab.objectives.base import Metrics, Objective, StepContext
from ftlab.objectives.rollouts import Rollout, sample
from ftlab.rewards.sources import RewardSource, total_reward

Sampler = Literal["generate", "static"]


class OnlineRL(Objective):
    """Base of objectives that learn from their own samples.

    Args:
        rewards: Reward sources, summed with their weights (FunctionReward, ModelReward).
        max_new_tokens: Longest completion.
        temperature: Sampling temperature.
        top_p: Nucleus sampling threshold.
        max_grad_norm: Gradient-norm clipping of each update (None: no clipping).
        merge_for_sampling: Sample with the method folded into the weights where it can be (LoRA-style
            adapters: faster decoding; but the frozen base weights, the reference, come back only within
            float32 rounding, about 1e-7 relative per step).
        sampler: `generate` (transformers' `generate`) or `static` (a decode loop over a static KV cache,
            compiled with torch.compile on CUDA; the same tokens as `generate` for greedy decoding).
    """

    batch_type: ClassVar[type] = PromptBatch
    needs_rollouts: ClassVar[bool] = True

    def __init__(
        self,
        rewards: list[RewardSource],
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_grad_norm: float | None = 1.0,
        merge_for_sampling: bool = False,
        sampler: Sampler = "generate",
    ) -> None:
        super().__init__()
        if not rewards:
            raise FTLabError(f"{type(self).__name__} needs at least one reward source")
        if sampler not in ("generate", "static"):
            raise FTLabError(f"{type(self).__name__} sampler must be 'generate' or 'static', got {sampler!r}")
        self.rewards = list(rewards)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.max_grad_norm = max_grad_norm
        self.merge_for_sampling = merge_for_sampling
        self.sampler = sampler
        self.generate_seconds: float | None = None
        """Seconds the last `rollout` spent sampling."""

    def rollout(self, ctx: StepContext, batch: PromptBatch, num_samples: int) -> Rollout:
        """`num_samples` completions per prompt with the objective's sampling settings, timed."""
        started = time.perf_counter()
        rollout = sample(
            ctx.model,
            ctx.tokenizer,
            batch,
            num_samples,
            self.max_new_tokens,
            self.temperature,
            self.top_p,
            merged=ctx.merged if self.merge_for_sampling else None,
            virtual_tokens=ctx.virtual_tokens,
            engine=self.sampler,
        )
        self.generate_seconds = time.perf_counter() - started
        return rollout

    def score(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total reward per completion [N], each source's mean reward)."""
        return total_reward(self.rewards, rollout, rollout.sequences.device)

    def validation_step(self, ctx: StepContext, batch: PromptBatch) -> Metrics:
        rollout = self.rollout(ctx, batch, 1)
        rewards, parts = self.score(rollout)
        return {"reward": rewards.mean(), "completion_length": rollout.completion_mask.sum(-1).mean(), **parts}
