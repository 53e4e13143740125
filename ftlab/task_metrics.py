"""TaskMetrics: one copy of an objective's metrics per validation set of a task mixture.

An objective keeps its validation metrics as torchmetrics objects (anywhere among its submodules,
e.g. `val_loss` or `val["accuracy"]`) or returns plain tensors. With several validation sets, the
module swaps in a task's copies around the objective's `validation_step`, so each task's numbers are
its own (`val/<task>/<name>`), and `val/<name>` is the unweighted mean over the tasks: a Metric's
`compute()` per task, or a tensor's batch-weighted epoch mean per task.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric


def _key(name: str) -> str:
    return name.replace(".", "__")


class TaskMetrics(nn.Module):
    def __init__(self, objective: nn.Module, tasks: list[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.names = [n for n, m in objective.named_modules() if n and isinstance(m, Metric)]
        originals = dict(objective.named_modules())
        self.copies = nn.ModuleDict(
            {t: nn.ModuleDict({_key(n): originals[n].clone() for n in self.names}) for t in self.tasks}
        )
        self._metric_of: dict[str, str] = {}  # logged name -> metric module name
        self._sums: dict[tuple[str, str], list[float]] = {}  # (task, logged name) -> [weighted sum, count]

    @contextmanager
    def swapped(self, objective: nn.Module, task: str) -> Iterator[None]:
        """Within the context, the objective updates `task`'s copies of its metrics."""
        originals = {n: objective.get_submodule(n) for n in self.names}
        try:
            for n in self.names:
                self._set(objective, n, self.copies[task][_key(n)])
            yield
        finally:
            for n, m in originals.items():
                self._set(objective, n, m)

    @staticmethod
    def _set(objective: nn.Module, name: str, module: nn.Module) -> None:
        parent, _, leaf = name.rpartition(".")
        setattr(objective.get_submodule(parent) if parent else objective, leaf, module)

    def record(self, task: str, name: str, value: Any, size: int) -> None:
        """Remember how to average `name` over the tasks at the epoch's end."""
        copies = self.copies[task]
        found = next((n for n in self.names if copies[_key(n)] is value), None)
        if found is not None:
            self._metric_of[name] = found
        elif isinstance(value, torch.Tensor):
            total = self._sums.setdefault((task, name), [0.0, 0])
            total[0] += float(value.detach().float()) * size
            total[1] += size

    def means(self) -> dict[str, torch.Tensor]:
        """`name` -> the unweighted mean over tasks of each task's epoch value; resets the tensor sums."""
        out = {
            name: torch.stack([self.copies[t][_key(m)].compute().float() for t in self.tasks]).mean()
            for name, m in self._metric_of.items()
        }
        names = {name for _, name in self._sums}
        for name in names:
            values = [s / c for (t, n), (s, c) in self._sums.items() if n == name and c]
            out[name] = torch.tensor(sum(values) / len(values))
        self._sums = {}
        return out
