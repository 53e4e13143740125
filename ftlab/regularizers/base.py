"""The Regularizer contract: a term added to any objective's training loss.

A regularizer sees the model and the method's trainable parameters (name -> parameter) and
returns a scalar penalty; the module adds it to the objective's loss at every optimizer step
(supervised and online-RL alike) and logs it as `train/reg/<name>`. What a regularizer must
precompute (a Fisher diagonal, anchors) it does in its own callbacks. Its state (`state_dict`)
travels in the run's checkpoints under `ftlab.regularizers`, so a resumed run keeps its anchors.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback
from torch import nn


class Regularizer(nn.Module):
    """Base class of regularizers (an `nn.Module` so its buffers follow the model's device)."""

    def penalty(self, model: nn.Module, params: dict[str, nn.Parameter]) -> torch.Tensor:
        """The scalar term to add to the loss, differentiable in `params`."""
        raise NotImplementedError

    def callbacks(self) -> list[Callback]:
        """Behaviour over time the regularizer brings along (e.g. estimating a Fisher at fit start)."""
        return []

    def check(self, module: Any) -> None:
        """Called at setup, before the model loads: refuse a composition this regularizer cannot
        serve, in one sentence naming the part."""

    @property
    def name(self) -> str:
        return type(self).__name__.lower()
