"""How the module meets Lightning's strategies: FSDP2 sharding, DDP wrapping rules, gathering.

FSDP runs through Lightning's `ModelParallelStrategy` (FSDP2, `fully_shard`; on CPU with gloo too):
the module shards in `configure_model`, after the method has changed the model, so adapters,
prefixes and frozen base weights all live in the same sharded blocks. FSDP2 keeps each parameter's
own `requires_grad` (frozen and trainable weights may share a block: only the trainable ones get
reduce-scattered gradients), so LoRA and adapters need no special wrapping policy. Each transformer
block is one sharding unit, then the rest of the model; the objective's head and a frozen reference
copy are sharded the same way. Optimizers are built afterwards, from the sharded parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ftlab.errors import FTLabError
from ftlab.models.anatomy import find_blocks

SHARDED = {"FSDPStrategy", "ModelParallelStrategy"}


def is_sharded(strategy: Any) -> bool:
    return type(strategy).__name__ in SHARDED


def is_ddp(strategy: Any) -> bool:
    from lightning.pytorch.strategies import DDPStrategy

    return isinstance(strategy, DDPStrategy)


def finds_unused(strategy: Any) -> bool:
    """Whether a DDP strategy looks for parameters that got no gradient in a step."""
    return bool(getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False))


def check_strategy(method: Any, strategy: Any) -> None:
    """Refuse, in one sentence, a method that the run's strategy cannot train (part of `check_composition`)."""
    if is_sharded(strategy) and not method.supports_fsdp:
        raise FTLabError(f"method {method.name} does not support sharded training ({type(strategy).__name__})")
    if type(strategy).__name__ == "FSDPStrategy":
        raise FTLabError(
            "ftlab shards with FSDP2: use strategy ModelParallelStrategy (experiments/base/trainer_fsdp.yaml), "
            "not FSDPStrategy"
        )
    if is_ddp(strategy) and method.schedules_trainable and not finds_unused(strategy):
        raise FTLabError(
            f"method {method.name} changes which parameters train during the run; under DDP use "
            "strategy: ddp_find_unused_parameters_true"
        )


def data_parallel(module: Any) -> tuple[int, Any]:
    """(how many ranks average their gradients, their process group: None for the default) in a
    LightningModule's run: every process under DDP, the data-parallel dimension of the device mesh under
    FSDP2 (tensor-parallel ranks of one replica share its batch), (1, None) in one process or before the
    module is attached to a trainer."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or trainer.world_size == 1:
        return 1, None
    mesh = getattr(module, "device_mesh", None)
    if mesh is not None and is_sharded(trainer.strategy):
        mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        return mesh.size(), mesh.get_group()
    return trainer.world_size, None


def shard(model: nn.Module, mesh: Any) -> nn.Module:
    """Shard every block of `model`, then the model itself, over the data-parallel mesh (FSDP2)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    try:
        _, blocks = find_blocks(model)
    except Exception:
        blocks = []
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if hasattr(model, "generate"):
        # a wrapper's generate (peft) calls the inner model's forward, not the root's: gather around it
        register_fsdp_forward_method(model, "generate")
    return model


def shard_heads(owner: nn.Module, mesh: Any) -> None:
    """Shard each child of `owner` (an objective) that holds parameters: its heads."""
    from torch.distributed.fsdp import fully_shard

    for child in owner.children():
        if any(True for _ in child.parameters()):
            fully_shard(child, mesh=mesh)


def full(value: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (a collective: every rank must call it); others unchanged."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def cut_like_buffers(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict of whole tensors (read from a checkpoint, the same on every rank) with each value whose
    buffer in `module` is sharded cut as that buffer is, locally (no communication); the rest unchanged.

    Under FSDP a resumed run's fit-start callbacks run before the checkpoint is restored, so regularizer
    buffers exist already, as shards; under DDP or in one process they do not, and load as saved."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    buffers = dict(module.named_buffers())
    out = {}
    for key, value in state.items():
        buffer = buffers.get(key)
        if isinstance(buffer, DTensor) and not isinstance(value, DTensor):
            value = value.to(device=buffer.to_local().device, dtype=buffer.dtype)
            value = distribute_tensor(value, buffer.device_mesh, buffer.placements, src_data_rank=None)
        out[key] = value
    return out
