"""Speed switches of a run that change how the model executes, never what it computes.

- Regional compilation (`model.compile`): each transformer block is compiled in place with
  `nn.Module.compile`, as torchtitan and torchtune do, rather than the whole model. The blocks of a stack
  share one compiled graph (they differ only in their weights), parameter names do not change (checkpoints,
  peft, FSDP2 sharding per block and the method's `disabled` context keep working), and whatever runs
  outside the blocks (embeddings, head, prefix caches, generation) stays eager. peft layers, bottleneck
  adapters and LoReFT's hooks live inside the blocks and are compiled with them.
- Activation checkpointing per block (`model.activation_checkpointing`): each block's activations are
  recomputed in the backward pass (Hugging Face's per-layer checkpointing, non-reentrant), trading compute
  for memory; it composes with compilation (the compiled block is what is recomputed).

Recompilation: with fixed shapes (packed rows, or padding to `max_length`) the compiled blocks are traced
once per mode (training, and eval / a disabled method for the reference pass) and never again. Variable
sequence lengths make the first new length recompile with dynamic shapes, and later lengths reuse it (one
more graph per mode); packing (`data.packing: true`) gives every row the same length and no recompilation.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ftlab.errors import FTLabError
from ftlab.models.anatomy import find_blocks

COMPILE_KEYS = {"fullgraph", "dynamic", "backend", "mode", "options"}


def compile_options(compile: bool | dict[str, Any]) -> dict[str, Any] | None:
    """The `torch.compile` keyword arguments of the `compile` switch: None (off), {} (on) or the given options."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return {}
    if not isinstance(compile, dict):
        raise FTLabError(f"model.compile must be true, false or a dict of torch.compile options, not {compile!r}")
    unknown = sorted(set(compile) - COMPILE_KEYS)
    if unknown:
        raise FTLabError(f"model.compile has unknown option(s) {unknown}; torch.compile takes {sorted(COMPILE_KEYS)}")
    return dict(compile)


def check_speed(method: Any, compile: bool | dict[str, Any], activation_checkpointing: bool) -> None:
    """Refuse, in one sentence, a switch the method cannot work with (before the model loads)."""
    options = compile_options(compile)
    if options is not None and method.supports_quantized:
        raise FTLabError(
            f"model.compile cannot compile method {method.name}: its 4-bit layers (bitsandbytes) do not compile; "
            "set model.compile: false"
        )
    if activation_checkpointing and not method.trains_backbone:
        raise FTLabError(
            f"model.activation_checkpointing has nothing to save with method {method.name}: no gradient flows "
            "through the backbone; set it to false"
        )
    if activation_checkpointing and not method.supports_activation_checkpointing:
        raise FTLabError(
            f"model.activation_checkpointing cannot recompute the blocks of method {method.name}: its key/value "
            "prefixes live in the attention cache, which checkpointed blocks do not use; set it to false"
        )


def _hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass (non-reentrant: frozen inputs need no grad)."""
    inner = _hf_model(model)
    if not getattr(inner, "supports_gradient_checkpointing", False):
        raise FTLabError(
            f"model.activation_checkpointing: {type(inner).__name__} does not support per-block checkpointing"
        )
    if hasattr(inner, "activation_checkpointing_enable"):  # the newer name of the same switch
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_blocks(model: nn.Module, options: dict[str, Any]) -> int:
    """Compile every transformer block of `model` in place; returns how many."""
    _, blocks = find_blocks(model)
    for block in blocks:
        block.compile(**options)
    return len(blocks)


def apply_speed(
    model: nn.Module, compile: bool | dict[str, Any], activation_checkpointing: bool, reference: nn.Module | None
) -> None:
    """Apply the switches to the (method-changed) model and to a frozen reference copy where there is one."""
    if activation_checkpointing:
        enable_checkpointing(model)
    options = compile_options(compile)
    if options is not None:
        compile_blocks(model, options)
        if reference is not None:
            compile_blocks(reference, options)
