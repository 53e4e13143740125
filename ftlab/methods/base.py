"""The Method contract: which parameters train, and how the backbone is changed.

A method knows nothing of losses or data. The module calls `apply` once the backbone is loaded
(idempotent: Lightning may call `configure_model` again), asks `param_groups` for the optimizer,
saves `trainable_state_dict` in checkpoints and uses `disabled` as a free reference policy where
the method supports it. Capabilities are class attributes checked once at setup.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback
from torch import nn

from ftlab.errors import FTLabError


class Method:
    """Base class of fine-tuning methods."""

    supports_disable: ClassVar[bool] = False
    """`disabled(model)` gives back the base model's outputs (the reference policy for free)."""
    supports_fsdp: ClassVar[bool] = True
    """Works with a sharded model (FSDP)."""
    supports_quantized: ClassVar[bool] = False
    """Works on a backbone loaded in 4/8 bit."""
    supports_packing: ClassVar[bool] = True
    """Works on packed rows (several examples per row, told apart by position ids)."""
    trains_backbone: ClassVar[bool] = True
    """False when only an objective's head trains (feature extraction)."""
    supports_activation_checkpointing: ClassVar[bool] = True
    """Trains with each block's activations recomputed in the backward pass (`model.activation_checkpointing`)."""
    merges_for_decoding: ClassVar[bool] = False
    """`merged_for_decoding(model)` folds the method into the weights while sampling (one matmul per layer
    instead of several) and takes it out after; the frozen weights come back within float rounding."""
    schedules_trainable: ClassVar[bool] = False
    """The set of parameters that get gradients changes during the run (gradual unfreezing): under
    DDP every one of them must require grad when the model is wrapped, and DDP must look for unused
    parameters in each step."""

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def virtual_tokens(self) -> int:
        """Positions the method puts before the input's (prompt learning): 0 for a method that only changes
        weights. Where it is not 0, a prompt's KV cache cannot be computed once and shared by its samples."""
        return 0

    def load_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for `from_pretrained` (e.g. a quantization config)."""
        return {}

    def apply(self, model: nn.Module) -> nn.Module:
        """Prepare `model` for training: inject modules, set `requires_grad`. Idempotent."""
        raise NotImplementedError

    def trainable_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Every parameter this method trains (over the whole run, for scheduled methods)."""
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """What the optimizer sees, from step 0 (every parameter that will ever train: a scheduled
        method keeps later ones frozen through `requires_grad`). A group may carry `name` and
        `lr_scale`, multiplied into its learning rate."""
        return [{"params": list(self.trainable_parameters(model).values()), "name": "trainable"}]

    def trainable_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Exactly the weights a checkpoint needs (names as in `model.named_parameters()`)."""
        return {name: p.detach() for name, p in self.trainable_parameters(model).items()}

    def load_trainable_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_parameters(model))
        unknown = sorted(set(state) - expected)
        missing = sorted(expected - set(state))
        if unknown or missing:
            raise FTLabError(
                f"{self.name} weights do not fit this model: "
                f"{len(unknown)} unexpected (e.g. {unknown[:3]}), {len(missing)} missing (e.g. {missing[:3]})"
            )
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(device=params[name].device, dtype=params[name].dtype))

    @contextmanager
    def disabled(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the context, `model` behaves as the base model (only where `supports_disable`)."""
        raise FTLabError(f"{self.name} cannot switch itself off; the reference needs a frozen copy of the model")
        yield model  # pragma: no cover

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the method into plain backbone weights, for export (where the method allows)."""
        raise FTLabError(f"{self.name} cannot be merged into plain backbone weights")

    @contextmanager
    def merged_for_decoding(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the context, `model` with the method folded into its weights (only where
        `merges_for_decoding`; otherwise `model` unchanged)."""
        yield model

    def callbacks(self) -> list[Callback]:
        """Schedules the method brings along (e.g. gradual unfreezing)."""
        return []


def set_trainable(model: nn.Module, names: set[str]) -> None:
    """Train exactly the parameters named in `names` (as in `model.named_parameters()`)."""
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
