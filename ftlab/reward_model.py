"""A reward model trained by ftlab, as a reward source of online RL (GRPO, PPO).

The run folder of a `ftlab.objectives.Reward` run is read back as its module (`ftlab.saved_run`), which
scores prompt + completion text with its own tokenizer, on the policy's device. It lives beside the
other readers of run folders (export, `ftlab.chain`), above the objectives: `ftlab.rewards` holds the
sources that need no trained run, so that the objectives importing them never import a run reader back.
In YAML: `class_path: ftlab.reward_model.ModelReward`, `init_args: {run_dir: runs/my_reward_model}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ftlab.errors import FTLabError
from ftlab.rewards.sources import RewardSource
from ftlab.saved_run import load_run


class ModelReward(RewardSource):
    """A reward model trained by ftlab (`ftlab.objectives.Reward`), loaded from its run folder.

    Args:
        run_dir: The reward model's run folder (config.yaml and trainable.safetensors).
        weight: Weight of this reward in the sum.
        name: Name in the logs.
        batch_size: Sequences scored per forward pass.
        max_length: Longest prompt + completion scored (cut from the left).
    """

    def __init__(
        self, run_dir: str, weight: float = 1.0, name: str | None = None, batch_size: int = 16, max_length: int = 1024
    ) -> None:
        super().__init__(weight, name or "reward_model")
        self.run_dir = Path(run_dir)
        if not (self.run_dir / "config.yaml").is_file():
            raise FTLabError(f"reward model folder {run_dir} has no config.yaml: name a finished Reward run")
        self.batch_size = batch_size
        self.max_length = max_length
        self._module: Any = None

    def module(self, device: torch.device) -> Any:
        if self._module is None:
            module = load_run(self.run_dir)
            if not hasattr(module.objective, "score"):
                raise FTLabError(f"{self.run_dir} is a {module.objective.name} run, not a reward model")
            self._module = module.requires_grad_(False)
        return self._module.to(device)

    def score(self, rollout: Any, device: torch.device) -> torch.Tensor:
        module = self.module(device)
        tok = module.tokenizer
        texts = [p + c for p, c in zip(rollout.prompts, rollout.completions, strict=True)]
        scores = []
        side = tok.truncation_side
        tok.truncation_side = "left"
        try:
            for i in range(0, len(texts), self.batch_size):
                enc = tok(
                    texts[i : i + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    add_special_tokens=False,
                ).to(device)
                with torch.no_grad():
                    scores.append(module.objective.score(module.model, enc["input_ids"], enc["attention_mask"]))
        finally:
            tok.truncation_side = side
        return torch.cat(scores)
