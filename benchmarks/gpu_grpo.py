"""GRPO step time and generation share per sampler, on a 1.0B Llama shape built from config (GPU) or a
tiny one (`--tiny`, a CPU smoke run).

Setup (GPU): hidden 2048, intermediate 8192, 16 layers, 32 heads, 8 KV heads, ftlab's offline BPE
vocabulary; LoRA r=16; bf16-mixed; 4 prompts × G = 8 per step, up to 256 new tokens, temperature 1,
β = 0.04; prompts from ftlab/assets/synthetic_prompts.jsonl; reward = share of one token (it only
has to be cheap). For each sampler (`generate`, `static`): warm-up steps (compilation included), then
timed steps; printed: seconds per step, generation share of the step (the objective's
`generate_seconds` over the step), generated tokens/s (completion tokens up to EOS over generation
time) and completions/s.

    python benchmarks/gpu_grpo.py [--steps 5] [--warmup 2] [--samplers generate static]
    python benchmarks/gpu_grpo.py --tiny --steps 2 --warmup 1   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

REPO = Path(__file__).resolve().parent.parent
LLAMA_1B = {
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}
TINY = {**LLAMA_1B, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY["num_key_value_heads"] = 2


class StepTimes(pl.Callback):
    """Per step: wall seconds, the objective's generation seconds, completion tokens and completions."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        completions = len(batch) * pl_module.objective.num_generations
        length = float(trainer.callback_metrics["train/completion_length"])
        self.rows.append(
            {
                "seconds": time.perf_counter() - self._started,
                "generate": float(pl_module.objective.generate_seconds),
                "tokens": length * completions,
                "completions": completions,
            }
        )


def run(sampler: str, args: argparse.Namespace) -> dict[str, float]:
    from ftlab.data import PromptDataModule
    from ftlab.methods import LoRA
    from ftlab.models import TinyBackbone
    from ftlab.module import FineTuneModule
    from ftlab.objectives import GRPO
    from ftlab.rewards import FunctionReward, TokenShare

    pl.seed_everything(0)
    backbone = TinyBackbone(config=TINY if args.tiny else LLAMA_1B, vocab_size=512 if args.tiny else 2048)
    objective = GRPO(
        rewards=[FunctionReward(TokenShare(token_id=5))],
        num_generations=8,
        max_new_tokens=args.new_tokens,
        beta=0.04,
        sampler=sampler,
    )
    module = FineTuneModule(backbone, LoRA(r=16, alpha=32), objective)
    data = PromptDataModule(train=str(REPO / "ftlab/assets/synthetic_prompts.jsonl"), batch_size=4, max_length=64)
    times = StepTimes()
    gpu = torch.cuda.is_available() and not args.tiny
    trainer = pl.Trainer(
        default_root_dir=args.root / sampler,
        max_steps=args.warmup + args.steps,
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if gpu else "32-true",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[times],
        log_every_n_steps=1,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    timed = times.rows[args.warmup :]
    seconds = statistics.median(r["seconds"] for r in timed)
    generating = sum(r["generate"] for r in timed)
    return {
        "s_per_step": seconds,
        "generation_share": generating / sum(r["seconds"] for r in timed),
        "generated_tokens_per_s": sum(r["tokens"] for r in timed) / generating,
        "completions_per_s": sum(r["completions"] for r in timed) / generating,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama on CPU (smoke run)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--samplers", nargs="+", default=["generate", "static"])
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "bench" / "gpu_grpo")
    args = parser.parse_args(argv)
    results = {sampler: run(sampler, args) for sampler in args.samplers}
    for sampler, row in results.items():
        print(
            f"{sampler}: {row['s_per_step']:.3f} s/step, generation {100 * row['generation_share']:.0f} % of the step, "
            f"{row['generated_tokens_per_s']:.0f} generated tokens/s, {row['completions_per_s']:.1f} completions/s"
        )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
