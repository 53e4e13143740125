"""Building a run's models: the backbone loaded, the method applied, the reference copy, the shards.

Called from `FineTuneModule.configure_model` so that strategies can shard what it builds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from ftlab import distributed
from ftlab.errors import FTLabError
from ftlab.methods.base import Method
from ftlab.models.backbone import Backbone
from ftlab.models.compile import apply_speed, check_speed
from ftlab.models.kernels import apply_liger, check_liger
from ftlab.models.precision import cast_frozen, check_frozen_dtype, frozen_dtype
from ftlab.objectives.base import Objective


@dataclass
class Speed:
    """The module's speed and memory options (see `FineTuneModule`): compiled blocks, recomputed activations,
    frozen weights held in a lower dtype, Liger kernels."""

    compile: bool | dict[str, Any] = False
    activation_checkpointing: bool = False
    frozen_dtype: str | None = None
    liger: bool = False

    def check(self, method: Method, precision: Any = None, device: Any = None) -> None:
        """Refuse options the method cannot use; with the trainer's precision and device (at setup), those
        the run cannot use either."""
        check_speed(method, self.compile, self.activation_checkpointing)
        check_frozen_dtype(self.frozen_dtype, method, precision)
        if device is not None:
            check_liger(self.liger, device)


def load_backbone(backbone: Backbone, method: Method, objective: Objective, tokenizer: PreTrainedTokenizerBase) -> Any:
    """The pretrained model the objective needs, loaded as the method asks, checked against the tokenizer."""
    model = backbone.load_model(objective.model_class, **method.load_kwargs())
    rows = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else None
    if rows is not None and len(tokenizer) > rows:
        raise FTLabError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {rows} rows; "
            "use the model's own tokenizer (model.backbone.init_args.tokenizer)"
        )
    if hasattr(model, "config"):
        model.config.use_cache = False
    return model


def build_models(
    backbone: Backbone,
    method: Method,
    objective: Objective,
    tokenizer: PreTrainedTokenizerBase,
    strategy: Any,
    mesh: Any,
    training: bool,
    speed: Speed | None = None,
) -> tuple[nn.Module, nn.Module | None]:
    """(the policy with the method applied and the objective's heads built, a frozen reference copy or None),
    with the speed options applied, sharded over `mesh` under a sharding strategy."""
    speed = speed or Speed()
    model = load_backbone(backbone, method, objective, tokenizer)
    if speed.liger:
        apply_liger(model)
    reference = None
    if objective.needs_reference and not method.supports_disable:
        # the method cannot switch itself off: keep a frozen copy of the initial weights as reference
        reference = copy.deepcopy(model).requires_grad_(False).eval()
    model = method.apply(model)
    objective.setup_model(model)
    dtype = frozen_dtype(speed.frozen_dtype)
    if dtype is not None:
        cast_frozen(model, dtype, set(method.trainable_parameters(model)))
        if reference is not None:
            cast_frozen(reference, dtype, set())
    apply_speed(model, speed.compile, speed.activation_checkpointing, reference)
    model.train(training)  # from_pretrained returns eval mode; Lightning switches modes itself
    if distributed.is_ddp(strategy) and method.schedules_trainable:
        # DDP registers the parameters that require grad when it wraps the model (after this hook):
        # all that will ever train must be among them; the method's schedule gates them again per step
        for param in method.trainable_parameters(model).values():
            param.requires_grad_(True)
    if mesh is not None and distributed.is_sharded(strategy):
        mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        distributed.shard(model, mesh)
        distributed.shard_heads(objective, mesh)
        if reference is not None:
            distributed.shard(reference, mesh)
    return model, reference
