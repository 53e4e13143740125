"""GRPO's two KL estimators at β = 0.04 on benchmarks/rl_learning.py's task (a tiny pretrained Llama,
LoRA, reward = share of " the" tokens): the mean reward of the last ten rollout batches per seed.

    python benchmarks/kl_estimators.py [--batches 40] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import lightning.pytorch as pl
import torch
from common import quiet_trainer
from rl_learning import REPO, RewardCurve, pretrain


def run(model_dir: Path, target: int, estimator: str, seed: int, batches: int, root: Path) -> list[float]:
    from ftlab.data import PromptDataModule
    from ftlab.methods import LoRA
    from ftlab.models import Pretrained
    from ftlab.module import FineTuneModule
    from ftlab.objectives import GRPO
    from ftlab.rewards import FunctionReward, TokenShare

    objective = GRPO(
        rewards=[FunctionReward(TokenShare(token_id=target))],
        num_generations=4,
        max_new_tokens=16,
        beta=0.04,
        kl_estimator=estimator,
    )
    pl.seed_everything(seed)
    module = FineTuneModule(
        Pretrained(str(model_dir)), LoRA(r=16, alpha=32), objective, optimizer=lambda p: torch.optim.AdamW(p, lr=2e-3)
    )
    curve = RewardCurve()
    data = PromptDataModule(train=str(REPO / "ftlab/assets/synthetic_prompts.jsonl"), batch_size=8, max_length=64)
    trainer = quiet_trainer(root / f"{estimator}-{seed}", batches, [curve])
    trainer.fit(module, data)
    return curve.rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "bench" / "rl")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    model_dir = pretrain(args.root)
    target = AutoTokenizer.from_pretrained(model_dir).encode(" the", add_special_tokens=False)[0]
    for estimator in ("k3", "k3_unbiased"):
        finals = []
        for seed in args.seeds:
            rewards = run(model_dir, target, estimator, seed, args.batches, args.root / "kl")
            finals.append(statistics.mean(rewards[-10:]))
            print(f"{estimator} seed {seed}: first10 {statistics.mean(rewards[:10]):.3f} last10 {finals[-1]:.3f}")
        spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
        print(f"{estimator}: last-10 reward {statistics.mean(finals):.3f} ± {spread:.3f} over {len(finals)} seeds")


if __name__ == "__main__":
    main()
