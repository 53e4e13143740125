"""Supervised fine-tuning: next-token cross-entropy on the answer tokens only.

The loss is the mean over every loss-carrying token in the batch (not a mean of per-row means), so
a long answer weighs as much as its tokens; prompt and padding tokens carry label -100. With no
prompt mask (all labels set) this is plain language modelling, i.e. continued pretraining.

Under data parallelism (DDP, FSDP) "the batch" is the union of every rank's micro-batch: each rank's
loss is its summed NLL times the number of ranks over the answer tokens of all ranks (one all-reduce of
two numbers), so the gradient averaging of DDP/FSDP gives exactly the gradient of the global token mean,
however unequally the answer tokens fall on the ranks; `train/loss` is that global token mean. With
gradient accumulation each micro-batch is normalised over its own tokens (across ranks) and Lightning
averages the micro-batches, as in one process.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torchmetrics import MeanMetric

from ftlab.batches import SFTBatch
from ftlab.objectives.base import Metrics, Objective, StepContext
from ftlab.objectives.token_logps import IGNORE, labelled_logps, masked_nll

__all__ = ["IGNORE", "SFT", "TokenPerplexity", "global_token_mean", "masked_nll"]


class TokenPerplexity(MeanMetric):
    """exp(token-weighted mean NLL); torchmetrics keeps the sums, so it aggregates over ranks."""

    def compute(self) -> torch.Tensor:
        return torch.exp(super().compute())


def global_token_mean(nll: torch.Tensor, count: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to differentiate, the token mean to log) from this rank's summed NLL and token count.

    In one process both are nll / count. Over R data-parallel ranks holding N tokens in all, the loss is
    nll * R / N: its gradient averaged over the ranks is the gradient of Σ nll / N, the global token mean,
    which is what is logged (the same value on every rank). A step without tokens anywhere has loss 0."""
    if ctx.ranks == 1:
        mean = nll / count.clamp(min=1)
        return mean, mean.detach()
    totals = ctx.sum_over_ranks(torch.stack([nll.detach().double(), count.double()]))
    tokens = totals[1].clamp(min=1)
    return nll * (ctx.ranks / tokens).to(nll.dtype), (totals[0] / tokens).to(nll.dtype)


class SFT(Objective):
    """Supervised fine-tuning (instruction tuning): cross-entropy on answer tokens, averaged over every
    answer token of the step (on all data-parallel ranks: see the module docstring)."""

    batch_type: ClassVar[type] = SFTBatch

    def __init__(self) -> None:
        super().__init__()
        self.val_loss = MeanMetric()
        self.val_ppl = TokenPerplexity()

    def nll(self, ctx: StepContext, batch: SFTBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed NLL over this batch's answer tokens, their count)."""
        logps, _ = labelled_logps(
            ctx.model,
            batch.input_ids,
            batch.labels,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        )
        return -logps.sum(), torch.tensor(logps.numel(), device=logps.device)

    def loss(self, ctx: StepContext, batch: SFTBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean NLL over this batch's own answer tokens, their count): no collective."""
        nll, count = self.nll(ctx, batch)
        return nll / count.clamp(min=1), count

    def training_step(self, ctx: StepContext, batch: SFTBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, shown = global_token_mean(*self.nll(ctx, batch), ctx)
        return loss, {"loss": shown}

    def validation_step(self, ctx: StepContext, batch: SFTBatch) -> Metrics:
        loss, count = self.loss(ctx, batch)  # the metrics weigh batches by their tokens and sum over ranks
        self.val_loss.update(loss, weight=count)
        self.val_ppl.update(loss, weight=count)
        return {"loss": self.val_loss, "ppl": self.val_ppl}
