"""Does online RL learn? GRPO and PPO on a synthetic verifiable task, with a tiny model pretrained here.

1. Pretrain: the quickstart (a tiny Llama, full SFT on the bundled instruction data), exported to a
   plain model folder with `ftlab export`, so the policy starts from a model that writes text.
2. Task: prompts from `ftlab/assets/synthetic_prompts.jsonl`; reward = the share of completion tokens
   equal to a target token (`ftlab.rewards.TokenShare`), the target being a token the pretrained model
   already emits now and then (" the" by default), so the reward is sparse but not zero.
3. GRPO and PPO, each with LoRA, the same prompts, seed and number of rollout batches; the mean
   reward of every rollout batch is recorded, and the table compares the first and last ten batches.
Also a GSM8K run of a few steps end to end (no accuracy claim for a tiny model).

    python benchmarks/rl_learning.py [--batches 150] [--out benchmarks/RL.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from common import quiet_trainer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


class RewardCurve(pl.Callback):
    def __init__(self) -> None:
        self.rewards: list[float] = []
        self.shares: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rewards.append(float(trainer.callback_metrics["train/reward"]))
        self.shares.append(float(trainer.callback_metrics.get("train/perf/generation_share", float("nan"))))


def pretrain(root: Path) -> Path:
    from ftlab.cli import main
    from ftlab.export import export

    run = root / "pretrain"
    if not (run / "DONE").exists():
        main(
            [
                "fit",
                "--config",
                str(REPO / "experiments/quickstart.yaml"),
                f"--trainer.default_root_dir={run}",
            ]
        )
    out = root / "pretrained"
    if not (out / "merged").exists():
        export(run, out)
    return out / "merged"


def run_rl(name: str, model_dir: Path, target: int, batches: int, root: Path) -> tuple[RewardCurve, float]:
    from ftlab.data import PromptDataModule
    from ftlab.methods import LoRA
    from ftlab.models import Pretrained
    from ftlab.module import FineTuneModule
    from ftlab.objectives import GRPO, PPO
    from ftlab.rewards import FunctionReward, TokenShare

    reward = [FunctionReward(TokenShare(token_id=target))]
    if name == "GRPO":
        objective, steps = GRPO(rewards=reward, num_generations=4, max_new_tokens=16, beta=0.04), batches
    else:
        objective, steps = (
            PPO(rewards=reward, max_new_tokens=16, kl_coef=0.02, epochs=2, minibatch_size=16),
            2 * batches,
        )
    pl.seed_everything(0)
    module = FineTuneModule(
        Pretrained(str(model_dir)), LoRA(r=16, alpha=32), objective, optimizer=lambda p: torch.optim.AdamW(p, lr=2e-3)
    )
    curve = RewardCurve()
    dm = PromptDataModule(
        train=str(REPO / "ftlab/assets/synthetic_prompts.jsonl"), batch_size=8 if name == "GRPO" else 16, max_length=64
    )
    trainer = quiet_trainer(root / name, steps, [curve])
    started = time.perf_counter()
    trainer.fit(module, dm)
    return curve, time.perf_counter() - started


def gsm8k_smoke(model_dir: Path, root: Path) -> dict:
    from ftlab.data import GSM8KDataModule
    from ftlab.methods import LoRA
    from ftlab.models import Pretrained
    from ftlab.module import FineTuneModule
    from ftlab.objectives import GRPO
    from ftlab.rewards import FunctionReward, gsm8k_exact_match, gsm8k_format

    gsm8k = REPO.parent / "shared" / "data" / "gsm8k"
    pl.seed_everything(0)
    objective = GRPO(
        rewards=[FunctionReward(gsm8k_exact_match), FunctionReward(gsm8k_format, weight=0.1)],
        num_generations=4,
        max_new_tokens=32,
    )
    module = FineTuneModule(Pretrained(str(model_dir)), LoRA(r=8), objective)
    dm = GSM8KDataModule(
        train=str(gsm8k / "train.jsonl.gz"), val=str(gsm8k / "test.jsonl"), batch_size=4, max_length=384, limit=64
    )
    trainer = pl.Trainer(
        default_root_dir=root / "gsm8k",
        max_steps=5,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=2,
        log_every_n_steps=1,
    )
    trainer.fit(module, dm)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if "reward" in k or "length" in k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--token", default=" the")
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "bench" / "rl")
    parser.add_argument("--out", type=Path, default=HERE / "RL.md")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    model_dir = pretrain(args.root)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok(args.token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise SystemExit(f"{args.token!r} is not one token for this tokenizer: {ids}")
    lines = [
        f"# Online RL learning check\n\nTarget token {args.token!r} (id {ids[0]}); {args.batches} rollout "
        "batches each; LoRA r=16 on the pretrained quickstart model; CPU. Reward = share of completion tokens "
        "equal to the target.\n",
        "| objective | first 10 batches | last 10 batches | wall (s) | generation share |",
        "|---|---:|---:|---:|---:|",
    ]
    curves = {}
    for name in ("GRPO", "PPO"):
        curve, wall = run_rl(name, model_dir, ids[0], args.batches, args.root)
        curves[name] = curve.rewards
        first, last = statistics.mean(curve.rewards[:10]), statistics.mean(curve.rewards[-10:])
        share = statistics.median(s for s in curve.shares if s == s)
        lines.append(f"| {name} | {first:.3f} | {last:.3f} | {wall:.0f} | {share:.2f} |")
        print(lines[-1], flush=True)
    lines.append("\nMean reward per block of 15 rollout batches:\n")
    lines.append("| batches | " + " | ".join(curves) + " |")
    lines.append("|---|" + "---:|" * len(curves))
    for start in range(0, args.batches, 15):
        row = [statistics.mean(c[start : start + 15]) for c in curves.values() if c[start : start + 15]]
        lines.append(f"| {start}-{start + 14} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    if (REPO.parent / "shared" / "data" / "gsm8k").is_dir():
        lines.append(
            f"\nGSM8K, 5 GRPO steps end to end (tiny model, no accuracy claim): {gsm8k_smoke(model_dir, args.root)}"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
