"""Reward sources for online RL, combined with weights: Python functions and trained reward models.

A function is named in YAML by import path (or as a callable class with init_args) and called as
`fn(prompts=..., completions=..., completion_ids=..., **columns) -> list[float]` with one value per
completion, columns being the prompt rows' other fields (e.g. `answer`). A trained reward model is
`ftlab.reward_model.ModelReward`: it reads a run folder, so it sits beside the other readers of runs,
above the objectives that use reward sources.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ftlab.errors import FTLabError


class RewardSource:
    """Base of reward sources: `score(rollout, device) -> [N]`, weighted by `weight`."""

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        self.weight = weight
        self._name = name

    @property
    def name(self) -> str:
        return self._name or type(self).__name__

    def score(self, rollout: Any, device: torch.device) -> torch.Tensor:
        raise NotImplementedError


class FunctionReward(RewardSource):
    """A reward function of the completions.

    Args:
        function: Import path of `fn(prompts, completions, completion_ids, **columns) -> list[float]`.
        weight: Weight of this reward in the sum.
        name: Name in the logs (default: the function's name).
    """

    def __init__(self, function: Callable[..., list[float]], weight: float = 1.0, name: str | None = None) -> None:
        super().__init__(weight, name or getattr(function, "__name__", type(function).__name__))
        self.function = function

    def score(self, rollout: Any, device: torch.device) -> torch.Tensor:
        try:
            values = self.function(
                prompts=rollout.prompts,
                completions=rollout.completions,
                completion_ids=rollout.completion_ids,
                **rollout.columns,
            )
        except Exception as err:  # the user's code: name it, and where it failed
            raise FTLabError(f"reward function {self.name} raised {type(err).__name__}{_where(err)}: {err}") from err
        return torch.tensor(checked_values(self.name, values, len(rollout.completions)), device=device)


def _where(err: BaseException) -> str:
    """' at FILE:LINE' of the innermost frame of the exception's traceback."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""


def checked_values(name: str, values: Any, expected: int) -> list[float]:
    """`values` as floats, or one sentence naming the reward function and what is wrong with its output: one
    finite number per completion (a list, tuple, array or 1-D tensor; bools count as 0/1)."""
    if isinstance(values, torch.Tensor) or hasattr(values, "ndim"):  # a tensor or an array
        if values.ndim != 1:
            raise FTLabError(
                f"reward function {name} returned an array of shape {tuple(values.shape)}, not {expected} numbers "
                "(one per completion)"
            )
        values = values.tolist()
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__") or not hasattr(values, "__iter__"):
        raise FTLabError(
            f"reward function {name} returned {type(values).__name__}, not a list of {expected} numbers "
            "(one per completion)"
        )
    if len(values) != expected:
        raise FTLabError(f"reward function {name} returned {len(values)} values for {expected} completions")
    out: list[float] = []
    for i, value in enumerate(values):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FTLabError(
                f"reward function {name} returned {value!r} ({type(value).__name__}) for completion {i}, not a number"
            ) from None
        if not math.isfinite(number):
            raise FTLabError(f"reward function {name} returned a non-finite value ({value}) for completion {i}")
        out.append(number)
    return out


def total_reward(
    sources: list[RewardSource], rollout: Any, device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ weight · score over the sources [N], and each source's mean score for the logs."""
    total = torch.zeros(len(rollout.completions), device=device)
    parts = {}
    for source in sources:
        values = source.score(rollout, device)
        total = total + source.weight * values
        parts[f"reward/{source.name}"] = values.mean()
    return total, parts
