"""A frozen base in bfloat16 under trained weights in float32 (`model.frozen_dtype`).

LoRA, adapters, prefix and the other parameter-efficient methods leave most of the model frozen: its weights
need no gradient or optimizer state, and holding them in bfloat16 halves their memory and the bytes each
matmul reads, while the weights that train stay in float32 (their updates are too small for bfloat16's 8
bits of mantissa). The matmuls then run in bfloat16 under autocast, which the trainer's mixed precision
(`trainer.precision: bf16-mixed`) provides: the switch is refused without it, for a method that trains every
weight (nothing is frozen) and for one whose trained set changes during the run (gradual unfreezing would
unfreeze bfloat16 weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ftlab.errors import FTLabError

MIXED = ("bf16-mixed", "16-mixed")


def frozen_dtype(name: str | None) -> torch.dtype | None:
    """The torch dtype of `model.frozen_dtype` (None: the backbone's own dtype throughout)."""
    if name is None:
        return None
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise FTLabError(f"model.frozen_dtype {name!r} is not a floating torch dtype (try bfloat16)")
    return value


def check_frozen_dtype(name: str | None, method: Any, precision: str | None) -> None:
    """Refuse, in one sentence, a frozen dtype the method or the trainer's precision cannot work with."""
    if frozen_dtype(name) is None:
        return
    if method.name == "Full":
        raise FTLabError("model.frozen_dtype has nothing to hold with method Full: every weight trains")
    if method.schedules_trainable:
        raise FTLabError(
            f"model.frozen_dtype cannot be used with method {method.name}: it unfreezes weights during the run"
        )
    if precision is not None and str(precision) not in MIXED:
        raise FTLabError(
            f"model.frozen_dtype: {name} needs mixed precision to run its matmuls (trainer.precision: bf16-mixed), "
            f"not {precision}"
        )


def cast_frozen(model: nn.Module, dtype: torch.dtype, trainable: set[str]) -> int:
    """Frozen parameters to `dtype`, the trainable ones to float32, in place; returns how many were cast."""
    cast = 0
    for name, param in model.named_parameters():
        if name in trainable:
            param.data = param.data.float()
        elif param.is_floating_point():
            param.data = param.data.to(dtype)
            cast += 1
    return cast
