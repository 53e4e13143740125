"""Supervised fine-tuning: next-token cross-entropy on the answer tokens only.

The loss is the mean over every loss-carrying token in the batch (not a mean of per-row means), so
a long answer weighs as much as its tokens; prompt and padding tokens carry label -100. With no
prompt mask (all labels set) this is plain language modelling, i.e. continued pretraining.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torchmetrics import MeanMetric

from ftlab.batches import SFTBatch
from ftlab.objectives.base import Metrics, Objective, StepContext
from ftlab.objectives.token_logps import IGNORE, labelled_logps, masked_nll

__all__ = ["IGNORE", "SFT", "TokenPerplexity", "masked_nll"]


class TokenPerplexity(MeanMetric):
    """exp(token-weighted mean NLL); torchmetrics keeps the sums, so it aggregates over ranks."""

    def compute(self) -> torch.Tensor:
        return torch.exp(super().compute())


class SFT(Objective):
    """Supervised fine-tuning (instruction tuning): cross-entropy on answer tokens."""

    batch_type: ClassVar[type] = SFTBatch

    def __init__(self) -> None:
        super().__init__()
        self.val_loss = MeanMetric()
        self.val_ppl = TokenPerplexity()

    def loss(self, ctx: StepContext, batch: SFTBatch) -> tuple[torch.Tensor, torch.Tensor]:
        logps, _ = labelled_logps(
            ctx.model,
            batch.input_ids,
            batch.labels,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        )
        count = torch.tensor(logps.numel(), device=logps.device)
        return -logps.sum() / count.clamp(min=1), count

    def training_step(self, ctx: StepContext, batch: SFTBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, _ = self.loss(ctx, batch)
        return loss, {"loss": loss.detach()}

    def validation_step(self, ctx: StepContext, batch: SFTBatch) -> Metrics:
        loss, count = self.loss(ctx, batch)
        self.val_loss.update(loss, weight=count)
        self.val_ppl.update(loss, weight=count)
        return {"loss": self.val_loss, "ppl": self.val_ppl}
