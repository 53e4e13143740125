"""Supervised fine-tuning: next-token cross-entropy on the answer tokens only.

The loss is the mean over every loss-carrying token in the batch (not a mean of per-row means), so
a long answer weighs as much as its tokens; prompt and padding tokens carry label -100. With no
prompt mask (all labels set) this is plain language modelling, i.e. continued pretraining.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from ftlab.batches import SFTBatch
from ftlab.objectives.base import Metrics, Objective, StepContext

IGNORE = -100


def masked_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood and the number of tokens it covers.

    logits [B, T, V] at position t predict labels[:, t + 1]; labels equal to -100 are skipped.
    Returns (sum of -log p, count) so that callers can weight across batches and ranks.
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum")
    count = (shift_labels != IGNORE).sum()
    return total, count


class TokenPerplexity(MeanMetric):
    """exp(token-weighted mean NLL); torchmetrics keeps the sums, so it aggregates over ranks."""

    def compute(self) -> torch.Tensor:
        return torch.exp(super().compute())


def forward_logits(model: torch.nn.Module, batch: SFTBatch) -> torch.Tensor:
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    # Prompt tuning prepends virtual tokens to the sequence: keep the positions of the real tokens.
    return out.logits[:, -batch.input_ids.shape[1] :]


class SFT(Objective):
    """Supervised fine-tuning (instruction tuning): cross-entropy on answer tokens."""

    batch_type: ClassVar[type] = SFTBatch

    def __init__(self) -> None:
        super().__init__()
        self.val_loss = MeanMetric()
        self.val_ppl = TokenPerplexity()

    def loss(self, ctx: StepContext, batch: SFTBatch) -> tuple[torch.Tensor, torch.Tensor]:
        total, count = masked_nll(forward_logits(ctx.model, batch), batch.labels)
        return total / count.clamp(min=1), count

    def training_step(self, ctx: StepContext, batch: SFTBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, _ = self.loss(ctx, batch)
        return loss, {"loss": loss.detach()}

    def validation_step(self, ctx: StepContext, batch: SFTBatch) -> Metrics:
        loss, count = self.loss(ctx, batch)
        self.val_loss.update(loss, weight=count)
        self.val_ppl.update(loss, weight=count)
        return {"loss": self.val_loss, "ppl": self.val_ppl}
