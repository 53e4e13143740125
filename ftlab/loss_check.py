"""Stopping a run on a NaN/inf training loss, with one sentence naming the step."""

from __future__ import annotations

from typing import Any

import torch

from ftlab.errors import FTLabError


def check_finite(loss: torch.Tensor, trainer: Any | None, step: int, batch_idx: int) -> torch.Tensor:
    """`loss`, or FTLabError when it is not finite. Reading the value waits for an accelerator, so off the CPU the
    check runs at logging steps only (where Lightning reads the loss anyway), naming the step it was seen at."""
    every = max(1, trainer.log_every_n_steps) if trainer is not None else 1
    if loss.device.type != "cpu" and step % every:
        return loss
    bad = not torch.isfinite(loss)
    if trainer is not None and trainer.world_size > 1:  # every rank stops, or none waits forever
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
    if bad:
        raise FTLabError(
            f"the training loss is {loss.item()} at step {step} (batch {batch_idx}); "
            "lower the learning rate or check the data"
        )
    return loss
