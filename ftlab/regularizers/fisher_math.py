"""The math of EWC's Fisher diagonal: the empirical estimate, online consolidation, the quadratic penalty.

Pure functions of tensors (tested on hand-computed numbers in tests/unit/test_ewc.py), shared by the EWC
regularizer and the callback that estimates its Fisher at fit start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ftlab.errors import FTLabError

FISHER_FILE = "ewc_fisher.safetensors"


def _wide(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision weights, else their own dtype (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


class _WeightedSquare(torch.autograd.Function):
    """Σ w (θ − θ*)² whose backward recomputes 2 w (θ − θ*) from the parameter, the anchor and the
    weight, which live anyway: autograd would otherwise keep a float32 difference per parameter
    alive until backward (for Full fine-tuning, a second copy of the model)."""

    @staticmethod
    def forward(ctx: Any, p: torch.Tensor, anchor: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(p, anchor, weight)
        square = (p.detach() - anchor).to(_wide(p.dtype)).square()
        return (square if weight is None else weight * square).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        p, anchor, weight = ctx.saved_tensors
        slope = 2.0 * (p.detach() - anchor).to(_wide(p.dtype))
        if weight is not None:
            slope = slope * weight
        return (grad * slope).to(p.dtype), None, None


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor (a DTensor's local shard; a plain tensor itself), never gathered."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def quadratic_penalty(
    params: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor], weights: dict[str, torch.Tensor] | None
) -> torch.Tensor:
    """Σ_i w_i (θ_i − θ*_i)² over every named tensor (w ≡ 1 when `weights` is None), in float32 at least.

    Sharded (DTensor) parameters contribute their local shard: each process then gets exactly its
    shard's gradient λ F (θ − θ*), and the value it logs is its shard's part of the sum."""
    total = torch.zeros((), dtype=torch.float32, device=local(next(iter(params.values()))).device)
    for name, p in params.items():
        weight = None if weights is None else local(weights[name])
        total = total + _WeightedSquare.apply(local(p), local(anchors[name]), weight)
    return total


def empirical_fisher(
    params: dict[str, nn.Parameter], losses: Iterable[Callable[[], torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """F_i = 1/N Σ_n (∂ℓ_n/∂θ_i)² over N per-sample losses (each a callable returning ℓ_n).

    Gradients are taken with `backward` and read from `.grad` (so a sharded model's gradients stay
    sharded); parameters frozen for now (a schedule's later ones) are switched on for the estimate
    and their `requires_grad` and `.grad` restored after."""
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    state = {name: (p.requires_grad, p.grad) for name, p in params.items()}
    count = 0
    try:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        for compute in losses:
            compute().backward()
            for name, p in params.items():
                if p.grad is not None:
                    fisher[name] += p.grad.detach().float().square()
                    p.grad = None
            count += 1
    finally:
        for name, p in params.items():
            p.requires_grad_(state[name][0])
            p.grad = state[name][1]
    if count == 0:
        raise FTLabError("the Fisher estimate got no old example")
    return {name: f / count for name, f in fisher.items()}


def consolidate(
    previous: dict[str, torch.Tensor], new: dict[str, torch.Tensor], gamma: float
) -> dict[str, torch.Tensor]:
    """Online EWC's running Fisher: γ·F_prev + F_new, per parameter."""
    if set(previous) != set(new):
        extra, missing = sorted(set(previous) - set(new)), sorted(set(new) - set(previous))
        raise FTLabError(
            f"the previous run's Fisher covers other parameters than this run trains: "
            f"{len(extra)} unknown (e.g. {extra[:2]}), {len(missing)} missing (e.g. {missing[:2]})"
        )
    return {name: gamma * previous[name].to(new[name].device) + f for name, f in new.items()}
