"""KTO (Ethayarajh et al., 2024, "Model Alignment as Prospect Theoretic Optimization"), on unpaired feedback.

With r(y) = log π(y|x) − log π_ref(y|x) (summed over answer tokens) and z₀ a batch estimate of KL(π‖π_ref),
an answer marked desirable costs λ_D (1 − σ(β (r − z₀))) and one marked undesirable λ_U (1 − σ(β (z₀ − r)));
the loss is the mean over the batch's answers. z₀ = max(0, mean_i r(y_{i+1}|x_i)) on mismatched pairs (each
prompt with another example's answer, built by `FeedbackDataModule`), without gradient, as TRL's `kto`.
The reference is the method switched off or a frozen copy, as for DPO.

Preference pairs are read as unpaired feedback, as TRL's KTO reads them (`unpair_preference_dataset`): each
chosen answer is desirable, each rejected one undesirable, and the mismatched pairs are formed over the 2B
answers of the batch. On pairs KTO also logs `choice/accuracy` (as every pairwise objective), so it enters a
comparison of preference objectives on the same pairs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ftlab.batches import FeedbackBatch, PreferenceBatch
from ftlab.errors import FTLabError
from ftlab.objectives.base import StepContext
from ftlab.objectives.dpo import DPO, answer_lengths
from ftlab.objectives.token_logps import IGNORE, labelled_logps, row_sums

__all__ = ["KTO", "kto_losses", "unpaired"]


def kto_losses(
    logratios: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Per answer: λ_D (1 − σ(β (r − z₀))) where desirable, λ_U (1 − σ(β (z₀ − r))) elsewhere. [B] -> [B]."""
    good = desirable_weight * (1 - F.sigmoid(beta * (logratios - kl)))
    bad = undesirable_weight * (1 - F.sigmoid(beta * (kl - logratios)))
    return torch.where(desirable, good, bad)


def feedback_logps(model: torch.nn.Module, batch: FeedbackBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probabilities of the examples and of the mismatched pairs, one forward pass."""
    tokens, rows = labelled_logps(model, batch.input_ids, batch.labels, attention_mask=batch.attention_mask)
    logps = row_sums(tokens, rows, batch.input_ids.shape[0])
    return logps[: len(batch)], logps[len(batch) :]


def unpaired(batch: PreferenceBatch) -> FeedbackBatch:
    """The 2B answers of B pairs as unpaired feedback: chosen desirable, rejected undesirable, in the pairs' row
    order; mismatched row i is row i's prompt with the answer of row (i + 1) mod 2B (cut to the batch's width)."""
    rows = batch.input_ids.shape[0]
    width = batch.input_ids.shape[1]
    lengths = batch.attention_mask.sum(-1).tolist()
    starts = (batch.labels != IGNORE).to(torch.int8).argmax(-1).tolist()  # each answer's first position
    padding = batch.input_ids[batch.attention_mask == 0]
    pad = int(padding[0]) if padding.numel() else 0  # masked out either way
    ids = torch.full_like(batch.input_ids, pad)
    labels = torch.full_like(batch.labels, IGNORE)
    mask = torch.zeros_like(batch.attention_mask)
    for i in range(rows):
        j = (i + 1) % rows
        answer = slice(starts[j], starts[j] + min(lengths[j] - starts[j], width - starts[i]))
        end = starts[i] + answer.stop - answer.start
        ids[i, : starts[i]] = batch.input_ids[i, : starts[i]]
        ids[i, starts[i] : end] = batch.input_ids[j, answer]
        labels[i, starts[i] : end] = batch.labels[j, answer]
        mask[i, :end] = 1
    pairs = len(batch)
    desirable = torch.arange(rows, device=batch.index.device) < pairs
    return FeedbackBatch(
        input_ids=torch.cat([batch.input_ids, ids]),
        attention_mask=torch.cat([batch.attention_mask, mask]),
        labels=torch.cat([batch.labels, labels]),
        desirable=desirable,
        index=torch.cat([batch.index, batch.index]),
        num_tokens=batch.num_tokens,
    )


class KTO(DPO):
    """Kahneman–Tversky optimisation against a reference policy, on answers marked desirable or not.

    Args:
        beta: Scale β of the implied reward (the paper used 0.1).
        desirable_weight: λ_D, the weight of desirable answers.
        undesirable_weight: λ_U, the weight of undesirable ones (the paper keeps λ_D n_D / (λ_U n_U) in [1, 4/3]).
    """

    batch_type: ClassVar[type] = FeedbackBatch
    also_consumes: ClassVar[tuple[type, ...]] = (PreferenceBatch,)
    METRICS: ClassVar[tuple[str, ...]] = (
        "loss",
        "kl",
        "rewards/desirable",
        "rewards/undesirable",
        "logps",
        "choice/accuracy",
    )

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        super().__init__(beta=beta)
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight

    def check_data(self, datamodule: Any) -> None:
        """A device batch needs the answers of two prompts at least: z₀ pairs each prompt with another row's answer,
        and in a batch of one example (or one pair) that answer is the prompt's own, so z₀ estimates the implied
        reward, not the KL (TRL's KTO refuses a batch of one too). A last batch of one in an epoch is kept."""
        super().check_data(datamodule)
        kind = "pairs" if getattr(datamodule, "batch_type", None) is PreferenceBatch else "examples"
        for option in ("batch_size", "eval_batch_size"):
            size = getattr(datamodule, option, None)
            if isinstance(size, int) and size < 2:
                raise FTLabError(
                    f"objective KTO needs data {option} of at least 2 {kind}: its KL estimate pairs each prompt "
                    f"with another prompt's answer, and {option} {size} has none"
                )

    def compute(self, ctx: StepContext, batch: FeedbackBatch | PreferenceBatch) -> dict[str, torch.Tensor]:
        pairs = batch if isinstance(batch, PreferenceBatch) else None
        if pairs is not None:
            batch = unpaired(pairs)
        with ctx.reference() as reference:
            ref, ref_mismatched = feedback_logps(reference, batch)
        logps, mismatched = feedback_logps(ctx.model, batch)
        kl = (mismatched.detach() - ref_mismatched).mean().clamp(min=0)
        logratios = logps - ref
        losses = kto_losses(logratios, batch.desirable, kl, self.beta, self.desirable_weight, self.undesirable_weight)
        rewards = self.beta * logratios.detach()
        values = {"loss": losses.mean(), "kl": kl, "logps": logps.detach().mean()}
        for name, rows in (("desirable", batch.desirable), ("undesirable", ~batch.desirable)):
            if bool(rows.any()):  # a batch may hold one kind only
                values[f"rewards/{name}"] = rewards[rows].mean()
        if pairs is not None:  # the measure every pairwise objective shares (see dpo.reward_metrics)
            n_chosen, n_rejected = answer_lengths(pairs)
            chosen, rejected = logps.detach()[: len(pairs)], logps.detach()[len(pairs) :]
            values["choice/accuracy"] = (chosen / n_chosen > rejected / n_rejected).float().mean()
        return values
