"""HH-RLHF on a tiny Llama: held-out accuracy of a reward model and of DPO's implicit reward, against chance.

    python benchmarks/hh_rlhf.py            # both runs; writes benchmarks/HH_RLHF.md
    python benchmarks/hh_rlhf.py --quick    # a few steps each; prints, writes nothing

Data: Anthropic HH-RLHF harmless-base test (../shared/data), split as experiments/data/hh_rlhf.yaml does:
2,308 usable pairs, a seeded 308 held out, 2,000 for training, 4 pairs per step; max_length 512 with the
prompt cut from the left to 256 tokens (the yaml's values). Model: the quickstart's Llama-shaped backbone
built from config (hidden 128, 4 blocks, 4/2 heads, intermediate 384, tied embeddings), randomly
initialised (seed 0), with ftlab's offline BPE tokenizer (vocab 2048, trained on the bundled instruction
data, as experiments/base/tiny_llama.yaml builds it). Two runs, each a fixed number of optimizer steps
(AdamW, weight decay 0.01, linear warm-up over 10% of the steps, cosine decay to 10%):
- reward model: ftlab `Reward` (Bradley-Terry, scalar head on the last token), method `Full` (every
  weight trains: a randomly initialised model has nothing useful for low-rank adapters to adapt);
- DPO: ftlab `DPO` (sigmoid loss, beta 0.1), method `LoRA` (r=8, alpha 16, every linear layer), the
  reference being the initial model (the adapters switched off).
After training each model scores every held-out pair once (and once before training): the reward model's
accuracy is the share of pairs where r(chosen) > r(rejected); DPO's is the share where its implicit reward
beta * (log pi - log pi_ref) is higher for the chosen answer (ftlab's `rewards/accuracy`; at the reference
every reward is 0, so a tie, counted as wrong). Each accuracy comes with k/n, a 95% Wilson score interval
and the exact two-sided binomial p-value against chance (0.5), so one can see whether it beats chance.
Because the chosen answer of this split is more often the shorter one, the report also gives the accuracy
of "prefer the shorter answer" (no model), how often each model prefers the shorter answer, and each
model's accuracy separately on the pairs whose chosen answer is the shorter and the longer one.
Defaults: 400 steps per run (0.8 epoch), one torch thread (the machine is shared): about 2 minutes for
the reward model and 4 for DPO on the 2-core CPU this was written on, 7 minutes in all.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from ftlab.data import HHRLHFDataModule
from ftlab.methods import Full, LoRA
from ftlab.models import TinyBackbone
from ftlab.module import FineTuneModule
from ftlab.objectives import DPO, Reward
from ftlab.objectives.dpo import answer_logps
from ftlab.schedules import WarmupCosine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
BACKBONE: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}
SEED = 0
BETA = 0.1
VAL_FRACTION = 0.1334  # round(2308 * 0.1334) = 308 held out, as in experiments/data/hh_rlhf.yaml


def code_state() -> str:
    """The ftlab code measured: its commit, and whether ftlab/ had uncommitted changes."""
    import subprocess

    import ftlab

    root = Path(ftlab.__file__).resolve().parent.parent
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "ftlab"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "ftlab (not a git checkout)"
    return f"ftlab at commit {commit.stdout.strip()}" + (" + uncommitted changes" if dirty.stdout.strip() else "")


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_p(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n trials under p = 0.5 (both tails, by symmetry)."""
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def datamodule(max_length: int) -> HHRLHFDataModule:
    return HHRLHFDataModule(
        train=str(HH),
        val_fraction=VAL_FRACTION,
        seed=SEED,
        batch_size=4,
        eval_batch_size=8,
        max_length=max_length,
        max_prompt_length=max_length // 2,
    )


@torch.no_grad()
def score_pairs(module: FineTuneModule, data: HHRLHFDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of every held-out pair's chosen and rejected answers: the reward model's scores, or DPO's
    implicit rewards beta * (log pi - log pi_ref) (ftlab's own functions, in eval mode)."""
    was_training = module.training
    module.eval()
    chosen, rejected = [], []
    # pairs of similar length together (less padding); the scores are put back in split order below
    order = sorted(range(len(data.val_set)), key=lambda i: pair_length(data.val_set[i]))
    pairs = [data.val_set[i] for i in order]
    for batch in DataLoader(pairs, batch_size=data.eval_batch_size, collate_fn=data.collate):
        if isinstance(module.objective, DPO):
            pc, pr = answer_logps(module.model, batch)
            with module.reference() as reference:
                rc, rr = answer_logps(reference, batch)
            c, r = BETA * (pc - rc), BETA * (pr - rr)
        else:
            rewards = module.objective.score(module.model, batch.input_ids, batch.attention_mask)
            c, r = rewards[: len(batch)], rewards[len(batch) :]
        chosen.append(c.float())
        rejected.append(r.float())
    module.train(was_training)
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(chosen)[back], torch.cat(rejected)[back]


def pair_length(ex: Any) -> int:
    return len(ex.prompt_ids) + max(len(ex.chosen_ids), len(ex.rejected_ids))


def summarize(chosen: torch.Tensor, rejected: torch.Tensor, data: HHRLHFDataModule) -> dict[str, Any]:
    """Held-out accuracy with its interval and p-value, mean rewards, and how the choices relate to length."""
    n = len(chosen)
    picks_chosen = chosen > rejected
    k = int(picks_chosen.sum())
    low, high = wilson(k, n)
    len_chosen = torch.tensor([len(ex.chosen_ids) for ex in data.val_set])
    len_rejected = torch.tensor([len(ex.rejected_ids) for ex in data.val_set])
    by_length = {}
    for name, where in (("chosen_shorter", len_chosen < len_rejected), ("chosen_longer", len_chosen > len_rejected)):
        kk, nn = int(picks_chosen[where].sum()), int(where.sum())
        by_length[name] = {"k": kk, "n": nn, "accuracy": kk / max(1, nn), "ci95": list(wilson(kk, nn))}
    unequal = len_chosen != len_rejected
    picks_shorter = torch.where(len_chosen < len_rejected, picks_chosen, ~picks_chosen)
    return {
        "n": n,
        "k": k,
        "accuracy": k / n,
        "ci95": [low, high],
        "p_value": binomial_p(k, n),
        "ties": int((chosen == rejected).sum()),
        "reward_chosen": float(chosen.mean()),
        "reward_rejected": float(rejected.mean()),
        "margin": float((chosen - rejected).mean()),
        "by_length": by_length,
        "picks_shorter": float(picks_shorter[unequal].float().mean()),
    }


class TrainAccuracy(pl.Callback):
    """Keeps each step's training accuracy (of the batch, before the update)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.values: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.values.append(float(trainer.callback_metrics[self.key]))


def run(kind: str, steps: int, lr: float, data: HHRLHFDataModule, backbone: TinyBackbone, root: Path) -> dict:
    pl.seed_everything(SEED, verbose=False)
    if kind == "reward":
        method, objective, key = Full(), Reward(), "train/accuracy"
    else:
        method, objective, key = (
            LoRA(r=8, alpha=16, target_modules="all-linear"),
            DPO(beta=BETA),
            "train/rewards/accuracy",
        )
    module = FineTuneModule(
        backbone,
        method,
        objective,
        optimizer=lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.01),
        scheduler=lambda o: WarmupCosine(o, warmup_steps=max(1, steps // 10), min_lr_ratio=0.1),
    )
    module.configure_model()
    start = time.perf_counter()
    before = summarize(*score_pairs(module, data), data)
    eval_seconds = time.perf_counter() - start
    accuracy = TrainAccuracy(key)
    trainer = pl.Trainer(
        default_root_dir=root / kind,
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,  # scored once after training, pair by pair, below
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        callbacks=[accuracy],
    )
    start = time.perf_counter()
    trainer.fit(module, data)
    fit_seconds = time.perf_counter() - start
    after = summarize(*score_pairs(module, data), data)
    summary = json.loads((root / kind / "summary.json").read_text())
    last = accuracy.values[-min(100, len(accuracy.values)) :]
    trainable, total = module.count_parameters()
    return {
        "run": kind,
        "method": method.name,
        "objective": objective.name,
        "lr": lr,
        "steps": trainer.global_step,
        "epochs": trainer.global_step * data.batch_size / len(data.train_set),
        "fit_seconds": fit_seconds,
        "seconds_per_step": fit_seconds / max(1, trainer.global_step),
        "eval_seconds": eval_seconds,
        "trainable_params": trainable,
        "total_params": total,
        "train_loss_first": summary["train_loss_first"],
        "train_loss_last": summary["train_loss"],
        "train_accuracy_last": sum(last) / len(last),
        "train_accuracy_window": len(last),
        "before": before,
        "after": after,
    }


def length_baseline(data: HHRLHFDataModule) -> dict[str, int]:
    longer = sum(len(ex.chosen_ids) > len(ex.rejected_ids) for ex in data.val_set)
    shorter = sum(len(ex.chosen_ids) < len(ex.rejected_ids) for ex in data.val_set)
    return {"n": len(data.val_set), "chosen_longer": longer, "chosen_shorter": shorter}


def verdict(s: dict[str, Any]) -> str:
    low, high = s["ci95"]
    if low > 0.5:
        return "above chance"
    if high < 0.5:
        return "below chance"
    return "not distinguishable from chance"


def report(
    rows: list[dict[str, Any]], lengths: dict[str, int], data: HHRLHFDataModule, args: argparse.Namespace
) -> str:
    lines = [
        "| run | method | trainable / total params | steps (epochs) | lr | fit (s) | train loss first → last | "
        "train acc (last steps) | held-out acc before | held-out acc after (k/n) | 95% CI | p vs 0.5 | verdict |",
        "|---|---|---|---|---:|---:|---|---:|---:|---|---|---:|---|",
    ]
    for r in rows:
        a, b = r["after"], r["before"]
        lines.append(
            f"| {r['objective']} | {r['method']} | {r['trainable_params']:,} / {r['total_params']:,} | "
            f"{r['steps']} ({r['epochs']:.2f}) | {r['lr']:g} | {r['fit_seconds']:.0f} | "
            f"{r['train_loss_first'] or float('nan'):.3f} → {r['train_loss_last']:.3f} | "
            f"{r['train_accuracy_last']:.3f} ({r['train_accuracy_window']}) | {b['accuracy']:.3f} | "
            f"**{a['accuracy']:.3f}** ({a['k']}/{a['n']}) | [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] | "
            f"{a['p_value']:.3g} | {verdict(a)} |"
        )
    rewards = [
        "| run | mean reward chosen | mean reward rejected | mean margin | ties | picks the shorter answer | "
        "acc where chosen is shorter | acc where chosen is longer |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        for when in ("before", "after"):
            s = r[when]
            short, long = s["by_length"]["chosen_shorter"], s["by_length"]["chosen_longer"]
            rewards.append(
                f"| {r['objective']} ({when}) | {s['reward_chosen']:.4f} | {s['reward_rejected']:.4f} | "
                f"{s['margin']:.4f} | {s['ties']} | {s['picks_shorter']:.3f} | {cell(short)} | {cell(long)} |"
            )
    n = lengths["n"]
    longer, shorter = lengths["chosen_longer"], lengths["chosen_shorter"]
    low, high = wilson(shorter, n)
    stats = ", ".join(f"{k}={v}" for k, v in data.stats.items())
    return (
        "# HH-RLHF: reward model and DPO on a tiny Llama\n\n"
        f"Written by `python benchmarks/hh_rlhf.py` ({time.strftime('%Y-%m-%d')}); how it is measured: the "
        "docstring of benchmarks/hh_rlhf.py.\n\n"
        f"Configuration: backbone {BACKBONE}, vocab 2048, seed {SEED}, randomly initialised; HH-RLHF harmless-base "
        f"test, {len(data.train_set)} training pairs / {len(data.val_set)} held out (seeded split of "
        f"experiments/data/hh_rlhf.yaml), 4 pairs per step, max_length {args.max_length} (prompt <= "
        f"{args.max_length // 2}); data counts: {stats}. CPU, {torch.get_num_threads()} torch thread(s). "
        f"Code: {code_state()}.\n\n"
        "## Held-out accuracy against chance\n\n" + "\n".join(lines) + "\n\n"
        "Train acc (last steps): mean batch accuracy over the last 100 steps, each batch scored just before its "
        "update; with less than one epoch every such batch is still unseen, so it is an online held-out "
        "estimate (over 400 pairs).\n\n"
        "## Rewards, and how much is answer length\n\n"
        "Reward model: its scalar score; DPO: beta * (log pi - log pi_ref) summed over the answer's tokens. "
        "Picks the shorter answer: share of pairs of unequal length where the model prefers the shorter one. "
        "The last two columns split the held-out pairs by whether the chosen answer is the shorter one.\n\n"
        + "\n".join(rewards)
        + "\n\n"
        f"Length alone: on the {n} held-out pairs the chosen answer is shorter in {shorter} ({shorter / n:.3f}, "
        f"95% CI [{low:.3f}, {high:.3f}]), longer in {longer}, equally long in {n - longer - shorter}: "
        f'"prefer the shorter answer" scores {shorter / n:.3f} with no model at all.\n\n'
        "## Reading\n\n" + "\n".join(f"- {reading(r)}" for r in rows) + "\n"
        "- With n = 308 held-out pairs a 95% interval is about ±0.055 wide on each side, so one seed and one "
        "split say little about differences of a few points between runs. The model is tiny and randomly "
        "initialised (no pretraining; its tokenizer was trained on the bundled instruction data, not on "
        f"HH-RLHF) and sees {rows[0]['epochs']:.2g} epoch(s) of 2,000 pairs: accuracies close to chance were the "
        "expected outcome and "
        "would say nothing against the objectives' code (checked by the tests on hand-computed values).\n"
    )


def cell(part: dict[str, Any]) -> str:
    return f"{part['accuracy']:.3f} ({part['k']}/{part['n']}) [{part['ci95'][0]:.3f}, {part['ci95'][1]:.3f}]"


def reading(r: dict[str, Any]) -> str:
    """One data-driven sentence per run: against chance, and against the length rule."""
    a = r["after"]
    long = a["by_length"]["chosen_longer"]
    text = (
        f"{r['objective']} ({r['method']}): held-out accuracy {a['accuracy']:.3f} "
        f"[{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}], {verdict(a)} (p = {a['p_value']:.3g}). "
        f"It prefers the shorter answer in {a['picks_shorter']:.0%} of the pairs of unequal length"
    )
    if long["ci95"][1] < 0.5:
        return text + (
            f"; where the chosen answer is the longer one its accuracy is {long['accuracy']:.3f}, below chance: "
            "what it picked up is mostly a preference for short answers (which this data rewards), not a way to "
            "tell the less harmful answer from the other."
        )
    if long["ci95"][0] > 0.5:
        return text + (
            f"; even where the chosen answer is the longer one its accuracy is {long['accuracy']:.3f}, above "
            "chance: it has learnt something besides length."
        )
    return text + (
        f"; where the chosen answer is the longer one its accuracy is {long['accuracy']:.3f}, not "
        "distinguishable from chance: what it learnt may be mostly length."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps per run; prints, writes nothing")
    parser.add_argument("--reward-steps", type=int, default=400)
    parser.add_argument("--dpo-steps", type=int, default=400)
    parser.add_argument("--reward-lr", type=float, default=1e-3)
    parser.add_argument("--dpo-lr", type=float, default=2e-3)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--out", type=Path, default=HERE / "HH_RLHF.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("ftlab", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.reward_steps, args.dpo_steps = 20, 20
    backbone = TinyBackbone(config=BACKBONE, vocab_size=2048, seed=SEED)
    data = datamodule(args.max_length)
    data.tokenizer = backbone.load_tokenizer()
    data.setup("fit")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, steps, lr in (("reward", args.reward_steps, args.reward_lr), ("dpo", args.dpo_steps, args.dpo_lr)):
            rows.append(run(kind, steps, lr, data, backbone, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    text = report(rows, length_baseline(data), data, args)
    print(text)
    if not args.quick:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
