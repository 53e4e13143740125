"""Liger kernels (`model.liger: true`): Triton kernels for RMSNorm, SwiGLU and RoPE inside the blocks.

An optional extra (`pip install ftlab[liger]`), CUDA only: the switch is refused at setup on another device
or where `liger-kernel` is not installed. The kernels replace the modules' forward in place (the weights and
their names stay), so methods, checkpoints and compilation are unchanged. Liger's fused linear cross-entropy
is left off: ftlab computes log-probabilities itself, with the head in chunks of rows
(`ftlab.objectives.chunked_logps`), which bounds the logits' memory the same way and gives per-token values
that DPO, GRPO and PPO need.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from ftlab.errors import FTLabError


def check_liger(enabled: bool, device: torch.device) -> None:
    """Refuse, in one sentence, Liger kernels where they cannot run."""
    if not enabled:
        return
    if device.type != "cuda":
        raise FTLabError(f"model.liger needs a CUDA device (Triton kernels), and this run is on {device.type}")
    if importlib.util.find_spec("liger_kernel") is None:
        raise FTLabError("model.liger needs the liger-kernel package: pip install 'ftlab[liger]'")


def apply_liger(model: nn.Module) -> None:
    """Patch the Hugging Face model inside `model` (a peft wrapper or not) with Liger's block kernels."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    _apply_liger_kernel_to_instance(
        model=inner, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )
