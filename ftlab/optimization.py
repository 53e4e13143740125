"""The run's optimizer and schedule, from the method's parameter groups and the objective's own parameters.

Each group is split in two: matrices with weight decay, 1-D parameters (biases, norms) without (unless
`decay_1d`); a group's `lr_scale` multiplies its learning rate. The optimizer's or scheduler's refusal of
its arguments becomes one sentence naming it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.base import Method


def built(part: str, factory: Any, argument: Any) -> Any:
    """`factory(argument)`; the optimizer's or scheduler's refusal of its arguments as one sentence naming it."""
    try:
        return factory(argument)
    except (ValueError, TypeError, KeyError) as err:
        classes = [a for a in (*getattr(factory, "args", ()), factory) if isinstance(a, type)]  # a jsonargparse partial
        name = classes[0].__name__ if classes else getattr(factory, "__qualname__", type(factory).__name__)
        raise FTLabError(f"model.{part} {name}: {err} (check model.{part}.init_args)") from None


def param_groups(method: Method, model: nn.Module, objective: nn.Module, decay_1d: bool) -> list[dict[str, Any]]:
    """The optimizer's groups: the method's and the objective's head, each split into decayed and not."""
    groups: list[dict[str, Any]] = []
    own = [p for p in objective.parameters() if p.requires_grad]
    head = [{"params": own, "name": "objective"}] if own else []
    for group in [*method.param_groups(model), *head]:
        params = list(group["params"])
        extra = {k: v for k, v in group.items() if k != "params"}
        matrices = [p for p in params if p.ndim >= 2 or decay_1d]
        vectors = [p for p in params if p.ndim < 2 and not decay_1d]
        if matrices:
            groups.append({"params": matrices, **extra})
        if vectors:
            name = {"name": f"{extra['name']}-no_decay"} if "name" in extra else {}
            groups.append({"params": vectors, **extra, **name, "weight_decay": 0.0})
    if not groups:
        raise FTLabError(f"method {method.name} leaves no parameter to train")
    return groups


def optimizers(groups: list[dict[str, Any]], optimizer_factory: Any, scheduler_factory: Any | None) -> Any:
    """What `configure_optimizers` returns: the optimizer, and its schedule stepped every optimizer step."""
    optimizer: torch.optim.Optimizer = built("optimizer", optimizer_factory, groups)
    for group in optimizer.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)
    if scheduler_factory is None:
        return optimizer
    scheduler = built("scheduler", scheduler_factory, optimizer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
