"""ORPO (Hong et al., 2024, "Monolithic Preference Optimization without Reference Model").

SFT on the chosen answer plus an odds-ratio penalty, no reference model: with P_w = exp(mean_t log π(y_w,t))
the per-token geometric mean probability of an answer (its log the answer's summed log-probability
divided by its token count) and odds(y) = P / (1 − P),

  L = L_NLL + λ · mean_pairs(−log σ(log odds(y_w) − log odds(y_l))),

where L_NLL is the mean negative log-likelihood over every chosen-answer token of the batch. TRL's
`ORPOTrainer` computes the same (its `beta` is λ).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ftlab.batches import PreferenceBatch
from ftlab.objectives.base import StepContext
from ftlab.objectives.dpo import DPO, answer_lengths, answer_logps, reward_metrics

__all__ = ["ORPO", "log_odds_ratio"]


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, stable on both sides of −ln 2 (Mächler, 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_odds_ratio(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor) -> torch.Tensor:
    """log odds(y_w) − log odds(y_l) from per-token mean log-probabilities, log odds = m − log(1 − e^m). [B] -> [B]."""
    return (chosen_mean - rejected_mean) - (log1mexp(chosen_mean) - log1mexp(rejected_mean))


class ORPO(DPO):
    """Odds-ratio preference optimisation: SFT on the chosen answers plus λ times the odds-ratio loss.

    Args:
        lam: λ, the weight of the odds-ratio term (the paper used 0.1 to 0.25; TRL's beta).
    """

    needs_reference: ClassVar[bool] = False
    METRICS: ClassVar[tuple[str, ...]] = (*DPO.METRICS, "nll", "log_odds_ratio")

    def __init__(self, lam: float = 0.1) -> None:
        super().__init__(beta=lam)

    def compute(self, ctx: StepContext, batch: PreferenceBatch) -> dict[str, torch.Tensor]:
        chosen, rejected = answer_logps(ctx.model, batch)
        n_chosen, n_rejected = answer_lengths(batch)
        chosen_mean, rejected_mean = chosen / n_chosen, rejected / n_rejected
        nll = -chosen.sum() / n_chosen.sum()
        log_odds = log_odds_ratio(chosen_mean, rejected_mean)
        loss = nll - self.beta * F.logsigmoid(log_odds).mean()
        reward_chosen, reward_rejected = self.beta * chosen_mean.detach(), self.beta * rejected_mean.detach()
        return {
            "loss": loss,
            **reward_metrics(reward_chosen, reward_rejected, chosen, rejected, (n_chosen, n_rejected)),
            "nll": nll.detach(),
            "log_odds_ratio": log_odds.detach().mean(),
        }
