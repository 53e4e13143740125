"""Feature extraction: the pretrained backbone stays frozen and only an objective's head trains.

The classic baseline of transfer learning (a linear probe when the head is linear), as compared
with fine-tuning in Peters, Ruder & Smith, "To Tune or Not to Tune?" (2019); unlike their feature
extraction, which mixes all layers with learned weights, the head sees the last layer only. Nothing in
the backbone changes, so the method has no weights to save, switches off for free (the model is
its own reference) and merges to the model as it is. It needs an objective with a head of its own
(`has_head`), which the module checks at setup. An objective may treat a backbone with no trainable
parameter as a fixed feature extractor (Classification runs it in eval mode and can cache features).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from torch import nn

from ftlab.methods.base import Method


class FeatureExtraction(Method):
    """Freeze the whole backbone; only the objective's head trains.

    Sharded training is refused: a frozen backbone has no gradients or optimizer state to shard,
    and an objective's feature cache skips the backbone's forward on some ranks, which a sharded
    forward (a collective over all ranks) cannot do.
    """

    supports_disable: ClassVar[bool] = True
    supports_fsdp: ClassVar[bool] = False
    trains_backbone: ClassVar[bool] = False

    def apply(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        return model

    def trainable_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {}

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return []

    @contextmanager
    def disabled(self, model: nn.Module) -> Iterator[nn.Module]:
        yield model  # nothing in the model changes, so it is its own base model

    def merge(self, model: nn.Module) -> nn.Module:
        return model  # the weights are the pretrained weights
