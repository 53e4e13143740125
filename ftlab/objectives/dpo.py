"""Direct Preference Optimization (Rafailov et al., 2023) and its loss variants.

With policy and reference log-probabilities of whole answers (summed over answer tokens only),
h = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x)), the losses are
- `Sigmoid`: −log σ(β h) (the paper's); with `label_smoothing` ε it is conservative DPO (cDPO,
  Mitchell 2023): −(1 − ε) log σ(β h) − ε log σ(−β h), for labels that are wrong with probability ε;
- `IPO` (Azar et al., 2023): (h − 1/(2β))², which does not push h to infinity on separable data.
IPO's paper states h on summed log-probabilities (the default); with `length_normalized` each answer's
log-ratio is divided by its token count first, h = (π_w − ref_w)/|y_w| − (π_l − ref_l)/|y_l| (TRL's `ipo`).
The implicit rewards are β(log π − log π_ref) of each answer.

Chosen and rejected answers go through the model in one forward pass (the batch stacks them), and
the reference comes from the module: the method switched off (LoRA, adapters, prefix, prompt: no
second model) or a frozen copy of the initial weights (Full, Freeze), computed without gradients and
without dropout.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torchmetrics import MeanMetric

from ftlab.batches import PreferenceBatch
from ftlab.objectives.base import Metrics, Objective, StepContext
from ftlab.objectives.token_logps import labelled_logps, row_sums, sequence_logps

__all__ = ["DPO", "IPO", "PreferenceLoss", "Sigmoid", "preference_logits", "sequence_logps"]


def preference_logits(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
) -> torch.Tensor:
    """h = (π_w − ref_w) − (π_l − ref_l), on log-probabilities [B] -> [B]."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


class PreferenceLoss:
    """A DPO-family loss of h (see the module docstring) and β, per pair [B] -> [B]."""

    length_normalized: bool = False
    """h is built from per-token means of the answers' log-ratios rather than their sums."""

    def __call__(self, h: torch.Tensor, beta: float) -> torch.Tensor:
        raise NotImplementedError


class Sigmoid(PreferenceLoss):
    """The DPO loss −log σ(βh); with label_smoothing ε > 0, conservative DPO.

    Args:
        label_smoothing: ε, the assumed probability that a preference label is flipped.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, h: torch.Tensor, beta: float) -> torch.Tensor:
        eps = self.label_smoothing
        return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


class IPO(PreferenceLoss):
    """The IPO loss (h − 1/(2β))².

    Args:
        length_normalized: Build h from each answer's log-ratio divided by its token count (TRL's ipo).
    """

    def __init__(self, length_normalized: bool = False) -> None:
        self.length_normalized = length_normalized

    def __call__(self, h: torch.Tensor, beta: float) -> torch.Tensor:
        return (h - 1 / (2 * beta)) ** 2


def answer_lengths(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer tokens that carry a label in the chosen and rejected halves: ([B], [B]) as floats."""
    counts = (batch.labels[:, 1:] != -100).sum(-1).to(torch.float32).clamp(min=1)
    return counts[: len(batch)], counts[len(batch) :]


def answer_logps(model: torch.nn.Module, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probabilities of the chosen and rejected halves, one forward pass: ([B], [B])."""
    tokens, rows = labelled_logps(model, batch.input_ids, batch.labels, attention_mask=batch.attention_mask)
    logps = row_sums(tokens, rows, batch.input_ids.shape[0])
    return logps[: len(batch)], logps[len(batch) :]


def reward_metrics(
    reward_chosen: torch.Tensor,
    reward_rejected: torch.Tensor,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    lengths: tuple[torch.Tensor, torch.Tensor],
) -> Metrics:
    """What every pairwise preference objective logs beside its loss: the implicit rewards of both answers
    (each objective's own definition), how often the chosen one wins and by how much, the answers'
    log-probabilities, and `choice/accuracy`, one definition for all: how often the policy's mean log-prob
    per answer token ranks the chosen answer above the rejected one (no reference: comparable across
    objectives, the measure of the objective-comparison study)."""
    n_chosen, n_rejected = lengths
    return {
        "choice/accuracy": (chosen.detach() / n_chosen > rejected.detach() / n_rejected).float().mean(),
        "rewards/chosen": reward_chosen.mean(),
        "rewards/rejected": reward_rejected.mean(),
        "rewards/accuracy": (reward_chosen > reward_rejected).float().mean(),
        "rewards/margin": (reward_chosen - reward_rejected).mean(),
        "logps/chosen": chosen.detach().mean(),
        "logps/rejected": rejected.detach().mean(),
    }


class DPO(Objective):
    """Direct preference optimisation against a reference policy.

    Args:
        beta: Strength of the KL constraint to the reference (the paper used 0.1 to 0.5).
        loss: The loss variant: Sigmoid (DPO, or cDPO with label smoothing) or IPO.
        precompute_reference: Compute the reference log-probabilities once before training and keep
            them in the run folder, instead of a reference forward pass every step.
    """

    batch_type: ClassVar[type] = PreferenceBatch
    needs_reference: ClassVar[bool] = True
    METRICS: ClassVar[tuple[str, ...]] = (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracy",
        "rewards/margin",
        "logps/chosen",
        "logps/rejected",
        "choice/accuracy",
    )

    def __init__(
        self, beta: float = 0.1, loss: PreferenceLoss | None = None, precompute_reference: bool = False
    ) -> None:
        super().__init__()
        self.beta = beta
        self.loss_fn = loss or Sigmoid()
        self.precompute_reference = precompute_reference
        self.reference_table: dict[str, torch.Tensor] | None = None
        self.val = torch.nn.ModuleDict({name.replace("/", "_"): MeanMetric() for name in self.METRICS})

    answer_logps = staticmethod(answer_logps)

    def callbacks(self) -> list[Callback]:
        from ftlab.objectives.reference_cache import ReferenceCache

        return [ReferenceCache(self)] if self.precompute_reference else []

    def reference_logps(self, ctx: StepContext, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference_table is not None:
            rows = self.reference_table["train" if self.training else "val"][batch.index]
            return rows[:, 0], rows[:, 1]
        with ctx.reference() as reference:
            return answer_logps(reference, batch)

    def compute(self, ctx: StepContext, batch: PreferenceBatch) -> dict[str, torch.Tensor]:
        # the reference first: its logits are freed before the policy's activations build up, so DPO's
        # peak memory is the policy pass's alone (as SFT's on the same sequences)
        ref_chosen, ref_rejected = self.reference_logps(ctx, batch)
        chosen, rejected = answer_logps(ctx.model, batch)
        n_chosen, n_rejected = answer_lengths(batch)
        if self.loss_fn.length_normalized:
            h = preference_logits(
                chosen / n_chosen, rejected / n_rejected, ref_chosen / n_chosen, ref_rejected / n_rejected
            )
        else:
            h = preference_logits(chosen, rejected, ref_chosen, ref_rejected)
        reward_chosen = self.beta * (chosen - ref_chosen).detach()
        reward_rejected = self.beta * (rejected - ref_rejected).detach()
        loss = self.loss_fn(h, self.beta).mean()
        lengths = (n_chosen, n_rejected)
        return {"loss": loss, **reward_metrics(reward_chosen, reward_rejected, chosen, rejected, lengths)}

    def training_step(self, ctx: StepContext, batch: PreferenceBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = self.compute(ctx, batch)
        return values["loss"], {k: v.detach() for k, v in values.items()}

    def validation_step(self, ctx: StepContext, batch: PreferenceBatch) -> Metrics:
        values = self.compute(ctx, batch)
        out: Metrics = {}
        for name, value in values.items():
            metric = self.val[name.replace("/", "_")]
            metric.update(value.detach(), weight=len(batch))
            out[name] = metric
        return out
