"""Gradual unfreezing with discriminative learning rates (Howard & Ruder, 2018, ULMFiT).

The model is cut into depth groups from the top: the top (final norm, untied head, pooler), then
each block from the last down, then (optionally) the embeddings. Group k trains at
lr / lr_decay**k (ULMFiT used 2.6). Training starts with `start_groups` groups and unfreezes one
more every `every_n_steps` optimizer steps (or `every_n_epochs` epochs).

Differences from ULMFiT and from Lightning's BaseFinetuning: every parameter that will ever train
is in the optimizer from step 0 (frozen ones have `requires_grad=False`, so they get no gradient and
AdamW skips them, weight decay included); no parameter group is added mid-run, which keeps the
optimizer state shape fixed for FSDP and resume. The number of unfrozen groups is a pure function
of the global step (or epoch), so a resumed run is in exactly the state of an uninterrupted one.
ULMFiT unfroze per epoch with slanted triangular rates: see `ftlab.schedules.SlantedTriangular`.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback
from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.base import Method
from ftlab.models.anatomy import anatomy


class GradualUnfreeze(Method):
    """Unfreeze depth groups from the top, one more every N steps or epochs, with lower rates deeper down.

    Args:
        every_n_steps: Unfreeze one more group every this many optimizer steps.
        every_n_epochs: Or every this many epochs (used when every_n_steps is not set).
        lr_decay: Group k (0 = top) trains at lr / lr_decay**k.
        start_groups: Groups trainable from the start.
        embeddings: Whether the embeddings form the last group (otherwise they stay frozen).
    """

    schedules_trainable = True

    def __init__(
        self,
        every_n_steps: int | None = None,
        every_n_epochs: int = 1,
        lr_decay: float = 2.6,
        start_groups: int = 1,
        embeddings: bool = True,
    ) -> None:
        if (every_n_steps is not None and every_n_steps < 1) or every_n_epochs < 1:
            raise FTLabError("GradualUnfreeze every_n_steps and every_n_epochs must be at least 1")
        if lr_decay <= 0 or start_groups < 1:
            raise FTLabError("GradualUnfreeze lr_decay must be positive and start_groups at least 1")
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.lr_decay = lr_decay
        self.start_groups = start_groups
        self.embeddings = embeddings

    def groups(self, model: nn.Module) -> list[list[str]]:
        """Parameter names per depth group, top first."""
        parts = anatomy(model)
        groups = [parts.top] if parts.top else []
        groups += [block for block in reversed(parts.blocks) if block]
        if self.embeddings and parts.stem:
            groups.append(parts.stem)
        return groups

    def unfrozen(self, step: int, epoch: int, total: int) -> int:
        """How many groups train at this point of the run."""
        stage = step // self.every_n_steps if self.every_n_steps else epoch // self.every_n_epochs
        return min(total, self.start_groups + stage)

    def set_stage(self, model: nn.Module, n: int) -> None:
        params = dict(model.named_parameters())
        for k, group in enumerate(self.groups(model)):
            for name in group:
                params[name].requires_grad_(k < n)

    def apply(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        self.set_stage(model, self.start_groups)
        return model

    def trainable_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(model.named_parameters())
        return {name: params[name] for group in self.groups(model) for name in group}

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        params = dict(model.named_parameters())
        return [
            {"params": [params[n] for n in group], "name": f"depth{k}", "lr_scale": self.lr_decay**-k}
            for k, group in enumerate(self.groups(model))
        ]

    def merge(self, model: nn.Module) -> nn.Module:
        return model

    def callbacks(self) -> list[Callback]:
        from ftlab.methods.unfreeze_schedule import UnfreezeSchedule

        return [UnfreezeSchedule(self)]
