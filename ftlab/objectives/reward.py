"""Reward modelling with the Bradley–Terry model (as in Ouyang et al., 2022; Stiennon et al., 2020).

A scalar head reads the hidden state of each sequence's last real token (the end of the answer);
the loss is −log σ(r_chosen − r_rejected − m) with an optional margin m (Llama 2 used a margin
graded by how strongly the labeller preferred the answer; here it is one constant). Both answers of
a pair go through the backbone in one pass. A trained reward model is a run folder: `load_run`
rebuilds it, and `Reward.score` gives rewards for new sequences (the source PPO and GRPO read).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from transformers import AutoModel

from ftlab.batches import PreferenceBatch
from ftlab.models.heads import ClassifierHead, pool
from ftlab.objectives.base import Metrics, Objective, StepContext


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Mean of −log σ(r_chosen − r_rejected − margin) over pairs [B]."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


class Reward(Objective):
    """Train a scalar reward model on preference pairs (Bradley–Terry).

    Args:
        margin: Constant margin m the chosen reward should exceed the rejected one by.
    """

    batch_type: ClassVar[type] = PreferenceBatch
    model_class: ClassVar = AutoModel
    has_head: ClassVar[bool] = True

    def __init__(self, margin: float = 0.0) -> None:
        super().__init__()
        self.margin = margin
        self.head: nn.Module | None = None
        self.val = nn.ModuleDict({k: MeanMetric() for k in ("loss", "accuracy", "margin", "chosen", "rejected")})

    def setup_model(self, model: nn.Module) -> None:
        if self.head is None:
            hidden = model.config.get_text_config().hidden_size
            self.head = ClassifierHead(hidden, 1).to(next(model.parameters()).device)

    def score(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards [N] of right-padded sequences [N, T]: the head on the last real token's hidden state."""
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state[:, -input_ids.shape[1] :]
        return self.head(pool(hidden, attention_mask, "last")).squeeze(-1).float()

    def compute(self, ctx: StepContext, batch: PreferenceBatch) -> dict[str, torch.Tensor]:
        rewards = self.score(ctx.model, batch.input_ids, batch.attention_mask)
        chosen, rejected = rewards[: len(batch)], rewards[len(batch) :]
        return {
            "loss": bradley_terry_loss(chosen, rejected, self.margin),
            "accuracy": (chosen > rejected).float().mean(),
            "margin": (chosen - rejected).detach().mean(),
            "chosen": chosen.detach().mean(),
            "rejected": rejected.detach().mean(),
        }

    def training_step(self, ctx: StepContext, batch: PreferenceBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = self.compute(ctx, batch)
        return values["loss"], {k: v.detach() for k, v in values.items()}

    def validation_step(self, ctx: StepContext, batch: PreferenceBatch) -> Metrics:
        out: Metrics = {}
        for name, value in self.compute(ctx, batch).items():
            self.val[name].update(value.detach(), weight=len(batch))
            out[name] = self.val[name]
        return out
