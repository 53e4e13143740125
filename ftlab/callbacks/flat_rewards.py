"""A warning when online RL has nothing to learn from: the rewards of the first rollout batches are all equal.

GRPO's advantage is each reward minus its group's mean, so when every group's rewards are equal (e.g. a reward
the model never reaches: all zeros) every advantage is zero and the loss is 0 step after step, silently. PPO's
rewards that are equal over the whole batch carry no signal either. `FlatRewards` watches the first `patience`
rollout batches: the spread within groups (`train/reward_group_std`) where the objective logs one, else over the
batch (`train/reward_std`). If every one of them is exactly zero it warns once, naming the mean reward, and
otherwise stays silent for the rest of the run.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger("ftlab")

SPREADS = ("train/reward_group_std", "train/reward_std")


class FlatRewards(pl.Callback):
    """Warns once when the rewards of each of the first `patience` rollout batches show no spread at all.

    Args:
        patience: How many rollout batches from the start must all be flat before the warning.
    """

    def __init__(self, patience: int = 5) -> None:
        self.patience = patience
        self.flat = 0
        self.done = False
        self.warned = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.done:
            return
        metrics = trainer.callback_metrics
        spread = next((metrics[name] for name in SPREADS if name in metrics), None)
        if spread is None or float(spread) != 0.0:
            self.done = True  # not online RL, or the rewards differ: nothing to say for the rest of the run
            return
        self.flat += 1
        if self.flat < self.patience:
            return
        self.done = self.warned = True
        if trainer.is_global_zero:
            reward = float(metrics.get("train/reward", float("nan")))
            log.warning(
                "the rewards of the first %d rollout batches are all equal (mean reward %.4g, std 0): every "
                "advantage is zero and the policy learns nothing; give a reward this model can reach (for "
                "ftlab.rewards.TokenShare, a token_id it emits: tokenizer(' the', add_special_tokens=False).input_ids)"
                ", or start from a model that writes text (experiments/rl_quickstart.yaml)",
                self.flat,
                reward,
            )
