"""SimPO (Meng et al., 2024, "Simple Preference Optimization with a Reference-Free Reward").

The implicit reward of an answer is its length-normalised log-likelihood, r(y) = (β/|y|) log π(y|x) with
|y| the answer's token count, and the loss asks the chosen answer's reward to beat the rejected one's by a
margin γ: −log σ(β/|y_w| log π(y_w|x) − β/|y_l| log π(y_l|x) − γ), averaged over pairs; with
`label_smoothing` ε the conservative form −(1 − ε) log σ(z) − ε log σ(−z). No reference model (no
`disabled()` needed, every method serves it). TRL trains it as CPO with loss_type simpo and cpo_alpha 0.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ftlab.batches import PreferenceBatch
from ftlab.objectives.base import StepContext
from ftlab.objectives.dpo import DPO, answer_lengths, answer_logps, reward_metrics

__all__ = ["SimPO", "simpo_loss"]


def simpo_loss(
    chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float, gamma: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Per pair: z = β (mean log π(y_w) − mean log π(y_l)) − γ, loss −(1 − ε) log σ(z) − ε log σ(−z). [B] -> [B]."""
    z = beta * (chosen_mean - rejected_mean) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


class SimPO(DPO):
    """Reference-free preference optimisation with length-normalised rewards and a target margin.

    Args:
        beta: Reward scale β (the paper used 2 to 10).
        gamma: Target reward margin γ (TRL's simpo_gamma; the paper tunes the ratio γ/β).
        label_smoothing: ε of the conservative form (0: the paper's loss).
    """

    needs_reference: ClassVar[bool] = False

    def __init__(self, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0) -> None:
        super().__init__(beta=beta)
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def compute(self, ctx: StepContext, batch: PreferenceBatch) -> dict[str, torch.Tensor]:
        chosen, rejected = answer_logps(ctx.model, batch)
        n_chosen, n_rejected = answer_lengths(batch)
        chosen_mean, rejected_mean = chosen / n_chosen, rejected / n_rejected
        loss = simpo_loss(chosen_mean, rejected_mean, self.beta, self.gamma, self.label_smoothing)
        reward_chosen, reward_rejected = self.beta * chosen_mean.detach(), self.beta * rejected_mean.detach()
        return {
            "loss": loss.mean(),
            **reward_metrics(reward_chosen, reward_rejected, chosen, rejected, (n_chosen, n_rejected)),
        }
