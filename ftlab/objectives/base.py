"""The Objective contract: what loss a run optimises, and on which batches.

An objective declares the batch kind it consumes (`batch_type`), the model class it needs
(`model_class`, an Auto class) and whether it needs a reference policy. `training_step` returns
the loss and detached metrics: no backward, no optimizer, no logging inside; the module logs them
as `train/<name>`. `validation_step` returns tensors or torchmetrics metrics, logged as
`val/<name>` and aggregated over the epoch (and across ranks) by Lightning. The math lives in
pure functions beside each objective, tested on hand-computed numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback
from torch import nn
from torchmetrics import Metric
from transformers import AutoModelForCausalLM

Metrics = dict[str, torch.Tensor | Metric]


@dataclass
class StepContext:
    """What an objective may use in a step: the policy, the reference policy on demand, and the
    data-parallel ranks (for a loss normalised over every rank's batch)."""

    model: nn.Module
    reference: Callable[[], AbstractContextManager[nn.Module]]
    """`with ctx.reference() as ref:` gives a model that computes the reference policy."""
    tokenizer: Any = None
    """The run's tokenizer (objectives that generate decode with it)."""
    ranks: int = 1
    """How many data-parallel ranks average their gradients in this step (DDP, FSDP); 1 in one process."""
    group: Any = None
    """Their process group (None: the default group)."""
    virtual_tokens: int = 0
    """Positions the run's method puts before the input (prompt learning; 0 for most methods)."""
    merged: Callable[[], AbstractContextManager[nn.Module]] | None = None
    """`with ctx.merged() as m:` the policy with the method folded into its weights, for decoding (None where
    the method does not fold)."""

    def sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the data-parallel ranks, without gradient (a collective: every rank must
        call it, in the same order); `value` itself in one process."""
        if self.ranks == 1:
            return value.detach()
        total = value.detach().clone()
        torch.distributed.all_reduce(total, group=self.group)
        return total

    def std_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """Sample standard deviation of `values` pooled over every rank's values, the same on each rank (so
        Lightning's averaging over ranks when it logs leaves it unchanged); 0 for a single value.
        From n, Σx, Σx² summed over ranks: s² = (Σx² − (Σx)²/n) / (n − 1), in float64."""
        v = values.detach().double().flatten()
        n, total, squares = self.sum_over_ranks(
            torch.stack([v.new_tensor(float(v.numel())), v.sum(), v.square().sum()])
        )
        var = (squares - total * total / n) / (n - 1).clamp(min=1)
        return var.clamp(min=0).sqrt().to(values.dtype)


class Objective(nn.Module):
    """Base class of objectives (an `nn.Module` so heads and metric states move with the model)."""

    batch_type: ClassVar[type]
    also_consumes: ClassVar[tuple[type, ...]] = ()
    """Other batch kinds the objective turns into its own (KTO reads preference pairs as unpaired feedback)."""
    model_class: ClassVar[Any] = AutoModelForCausalLM
    needs_reference: ClassVar[bool] = False
    has_head: ClassVar[bool] = False
    """The objective owns trainable parameters of its own (a classifier, a value head)."""
    needs_rollouts: ClassVar[bool] = False
    """Online RL: each batch is turned into rollouts (`make_rollouts`) and then into one or more
    optimizer steps, one per item of `minibatches(rollouts)`; the module runs those steps."""
    max_grad_norm: float | None = None
    """Gradient-norm clipping the module applies to each of the objective's own optimizer steps."""
    generate_seconds: float | None = None
    """Online RL: seconds the last `make_rollouts` spent sampling (the module logs their share of the step)."""

    def make_rollouts(self, ctx: StepContext, batch: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        """Sample, score and prepare what the updates need, without gradients: (buffer, metrics)."""
        raise NotImplementedError

    def minibatches(self, buffer: Any) -> Iterator[Any]:
        """The minibatches of one batch's updates (several epochs over the buffer for PPO)."""
        raise NotImplementedError

    @classmethod
    def consumes(cls, batch_type: Any) -> bool:
        """Whether the objective trains on batches of `batch_type`."""
        return batch_type is cls.batch_type or batch_type in cls.also_consumes

    def check_data(self, datamodule: Any) -> None:
        """Called at setup, after the data is read and before the model loads: refuse data this
        objective cannot use (e.g. a label count that differs from the head's), in one sentence."""

    def callbacks(self) -> list[Callback]:
        """Behaviour over time the objective brings along (e.g. precomputing reference log-probs)."""
        return []

    def setup_model(self, model: nn.Module) -> None:
        """Called once the method has been applied: build heads sized to the model here."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def training_step(self, ctx: StepContext, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def validation_step(self, ctx: StepContext, batch: Any) -> Metrics:
        raise NotImplementedError
