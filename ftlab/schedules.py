"""Learning-rate schedules that know the run's length from the trainer."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosine(LRScheduler):
    """Linear warmup from 0, then cosine decay to `min_lr_ratio` of the peak rate.

    factor(s) = s / warmup for s < warmup, else
    min_lr_ratio + (1 - min_lr_ratio) · ½ (1 + cos(π · min(1, (s - warmup) / (total - warmup)))).

    Args:
        optimizer: Filled in by the module.
        warmup_steps: Optimizer steps of linear warmup.
        total_steps: Length of the schedule; None takes the trainer's estimate of the run's steps.
        min_lr_ratio: Floor of the decay, as a share of the peak rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        total = self.total_steps if self.total_steps is not None else step + 1
        progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


class SlantedTriangular(LRScheduler):
    """Slanted triangular learning rates (Howard & Ruder, 2018): a short linear rise, a long linear fall.

    cut = ⌊T · cut_frac⌋; p = t / cut for t < cut, else 1 − (t − cut) / (cut · (1 / cut_frac − 1));
    lr = lr_max · (1 + p · (ratio − 1)) / ratio. ULMFiT used cut_frac 0.1 and ratio 32.

    Args:
        optimizer: Filled in by the module.
        total_steps: T; None takes the trainer's estimate of the run's steps.
        cut_frac: Share of the steps spent rising.
        ratio: How much smaller the lowest rate is than the peak.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        cut_frac: float = 0.1,
        ratio: float = 32.0,
        last_epoch: int = -1,
    ) -> None:
        self.total_steps = total_steps
        self.cut_frac = cut_frac
        self.ratio = ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        total = self.total_steps if self.total_steps is not None else step + 1
        cut = max(1, math.floor(total * self.cut_frac))
        p = step / cut if step < cut else max(0.0, 1 - (step - cut) / (cut * (1 / self.cut_frac - 1)))
        return (1 + p * (self.ratio - 1)) / self.ratio

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
