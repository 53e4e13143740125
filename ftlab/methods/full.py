"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from torch import nn

from ftlab.methods.base import Method


class Full(Method):
    """Full fine-tuning: all backbone weights train; checkpoints hold the whole model."""

    def apply(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(True)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return model  # the weights are plain backbone weights already
