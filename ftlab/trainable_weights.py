"""A run's trainable weights: what checkpoints hold, how they are read back and checked, how many there are.

Keys are those of the module's `state_dict`: `model.<name>` for the method's weights, `objective.<name>`
for an objective's head. Nothing frozen is ever saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftlab import distributed
from ftlab.errors import FTLabError
from ftlab.methods.base import Method
from ftlab.runfolder import load_weights

PREFIX = "model."
HEAD = "objective."


def trainable_state(
    method: Method, model: nn.Module, objective: nn.Module, gather: bool = False
) -> dict[str, torch.Tensor]:
    """Trainable weights only. With `gather`, sharded weights are assembled whole (a collective under FSDP)."""
    state = {PREFIX + k: v for k, v in method.trainable_state_dict(model).items()}
    state.update({HEAD + k: p.detach() for k, p in objective.named_parameters() if p.requires_grad})
    if gather:
        state = {k: distributed.full(v) for k, v in state.items()}
    return state


def read_state(source: str | Path | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights from a dict, a `.safetensors` file or a Lightning `.ckpt`."""
    if isinstance(source, dict):
        return source
    if str(source).endswith(".safetensors"):
        return load_weights(Path(source))
    return torch.load(source, map_location="cpu", weights_only=True)["state_dict"]


def check_keys(state: dict[str, Any], own: dict[str, torch.Tensor], source: str) -> None:
    """Refuse, naming `source`, weights whose names or shapes are not this run's trainable weights."""
    if set(state) != set(own):
        extra, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
        raise FTLabError(
            f"{source} does not hold this run's trainable weights: "
            f"{len(extra)} unexpected (e.g. {extra[:2]}), {len(missing)} missing (e.g. {missing[:2]})"
        )
    for name, value in state.items():
        shape = tuple(own[name].shape)  # a DTensor reports its whole shape
        if tuple(value.shape) != shape:
            raise FTLabError(
                f"{source} holds {name} of shape {tuple(value.shape)} where this run has {shape}: it was saved "
                "with other method settings (the run folder's config.yaml records them)"
            )


def load_state(method: Method, model: nn.Module, objective: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy checked trainable weights into the model (through the method) and the objective's head."""
    model_state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    method.load_trainable_state_dict(model, model_state)
    own = {k[len(HEAD) :]: v for k, v in state.items() if k.startswith(HEAD)}
    if own:
        objective.load_state_dict(own, strict=False)


def count_parameters(method: Method, model: nn.Module, objective: nn.Module) -> tuple[int, int]:
    """(trainable over the run, total) parameters of the model and the objective's head."""
    head = [p for p in objective.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in method.trainable_parameters(model).values())
    trainable += sum(p.numel() for p in head)
    total = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in head)
    return trainable, total


def regularizer_states(regularizers: nn.ModuleList) -> list[dict[str, torch.Tensor]]:
    """Every regularizer's state (anchors, Fisher) as whole CPU tensors: a resumed run cuts them into its shards."""
    return [{k: distributed.full(v).detach().cpu() for k, v in r.state_dict().items()} for r in regularizers]


def load_regularizer_states(regularizers: nn.ModuleList, saved: list[dict[str, torch.Tensor]]) -> None:
    for regularizer, state in zip(regularizers, saved, strict=False):
        regularizer.load_state_dict(distributed.cut_like_buffers(state, regularizer), strict=False)
