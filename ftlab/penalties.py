"""The regularizers' penalties of one step, and the loss they are added to.

Penalties are computed before the objective's forward pass: under FSDP the parameters must be in
their sharded form, like the anchors (the root's stay gathered after a forward or `generate` until the
next backward, so they are resharded first). A rank's penalty then covers its own shards: the logged
value is summed over the data-parallel ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ftlab.methods.base import Method


@dataclass
class Penalties:
    """Each regularizer's penalty by name, and whether they were computed on sharded parameters."""

    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    sharded: bool = False

    def added_to(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], group: Any = None) -> torch.Tensor:
        """The objective's loss plus the penalties (each logged as `reg/<name>`; `loss` is the total);
        `group`: the data-parallel process group a sharded penalty is summed over."""
        if not self.terms:
            return loss
        shown = metrics.get("loss", loss).detach()  # the objective's value (SFT: the global token mean)
        for name, term in self.terms.items():
            value = term.detach().clone()
            if self.sharded:  # the parameters are sharded over the data-parallel group only
                torch.distributed.all_reduce(value, group=group)
            metrics[f"reg/{name}"] = value
            shown = shown + value
            loss = loss + term
        metrics["loss"] = shown
        return loss


def penalties(regularizers: nn.ModuleList, method: Method, model: nn.Module) -> Penalties:
    """Every regularizer's penalty on the method's trainable parameters."""
    if not len(regularizers):
        return Penalties()
    from torch.distributed.fsdp import FSDPModule

    sharded = isinstance(model, FSDPModule)
    if sharded:
        model.reshard()
    params = method.trainable_parameters(model)
    return Penalties({r.name: r.penalty(model, params) for r in regularizers}, sharded)
