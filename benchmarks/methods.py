"""Trainable parameters, peak memory and step time per fine-tuning method, on one backbone.

    python benchmarks/methods.py                # every method, each in a fresh process; writes METHODS.md
    python benchmarks/methods.py --only lora    # one method, printed as JSON

Backbone: a Llama-shaped model built from config (hidden 512, 8 blocks, GQA 8/4 heads, intermediate
1536, vocab 2048; about 22M parameters), SFT on the bundled instruction data, batch 8, rows up to
128 tokens, AdamW. Step time is the median over `--steps` optimizer steps after 3 warm-up steps.
Two memory numbers: "weights+grads+optimizer" counts the bytes of the training state exactly (stored
weights, 4-bit ones at their packed size; a gradient per trainable parameter; the optimizer's state
tensors). "Peak memory" on CPU is the process's peak resident set size minus its size before the model
was loaded: it adds activations but also allocator slack and the memory-mapped checkpoint pages, so
it is noisy at this size; on CUDA it is the allocator's peak. Each method runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BACKBONE = {
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
METHODS = {
    "full": ("Full", {}),
    "freeze": ("Freeze", {"last_blocks": 2}),
    "gradual_unfreeze": ("GradualUnfreeze", {"every_n_steps": 2}),
    "lora": ("LoRA", {"r": 8}),
    "qlora": ("QLoRA", {"r": 8}),
    "adapter_sequential": ("AdapterSequential", {}),
    "adapter_parallel": ("AdapterParallel", {}),
    "adapter_hybrid": ("AdapterHybrid", {}),
    "prefix": ("PrefixTuning", {"num_virtual_tokens": 16}),
    "prompt": ("PromptTuning", {"num_virtual_tokens": 16}),
}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(name: str, steps: int, root: Path) -> dict:
    import lightning.pytorch as pl
    import torch
    from transformers import AutoModelForCausalLM

    import ftlab.methods as methods
    from ftlab.data import SFTDataModule
    from ftlab.models import TinyBackbone
    from ftlab.module import FineTuneModule
    from ftlab.objectives import SFT

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            self.times.append(time.perf_counter() - self.t0)

    cls_name, kwargs = METHODS[name]
    backbone = TinyBackbone(config=BACKBONE, vocab_size=2048)
    pl.seed_everything(0)
    backbone.model_dir(AutoModelForCausalLM)  # build the saved model once, before measuring
    baseline = rss_mb()
    module = FineTuneModule(
        backbone, getattr(methods, cls_name)(**kwargs), SFT(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4)
    )
    timer = StepTimer()
    trainer = pl.Trainer(
        default_root_dir=root,
        max_steps=steps + 3,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[timer],
        limit_val_batches=0,
    )
    dm = SFTDataModule(train=str(REPO / "ftlab/assets/self_instruct_seed.jsonl"), batch_size=8, max_length=128)
    trainer.fit(module, dm)
    trainable, total = module.count_parameters()
    # Training state in bytes, exactly: stored weights (4-bit ones at their packed size, tied ones once),
    # one gradient per trainable parameter, and the optimizer's state tensors.
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in module.model.state_dict().values()
    }
    grads = sum(p.numel() * p.element_size() for p in module.method.trainable_parameters(module.model).values())
    optimizer = trainer.optimizers[0]
    moments = sum(v.nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim)
    state_mb = (sum(storages.values()) + grads + moments) / 2**20
    cuda = torch.cuda.is_available()
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "method": name,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100 * trainable / total,
        "step_seconds": statistics.median(timer.times[3:]),
        "peak_memory_mb": peak - (0 if cuda else baseline),
        "state_memory_mb": state_mb,
        "device": "cuda" if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| method | trainable params | % of total | weights+grads+optimizer (MB) | peak memory (MB) | step (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trainable_params']:,} | {r['trainable_pct']:.2f} | {r['state_memory_mb']:.0f} | "
            f"{r['peak_memory_mb']:.0f} | {r['step_seconds']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(METHODS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=HERE / "METHODS.md")
    args = parser.parse_args()
    if args.only:
        import tempfile

        with tempfile.TemporaryDirectory() as root:
            print("RESULT " + json.dumps(measure(args.only, args.steps, Path(root))))
        return
    rows = []
    for name in METHODS:
        done = subprocess.run(
            [sys.executable, __file__, "--only", name, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[len("RESULT ") :]))
        print(rows[-1], flush=True)
    header = (
        f"# Methods benchmark\n\nBackbone: Llama-shaped, {BACKBONE}; SFT, batch 8, rows up to 128 tokens, "
        f"median of {args.steps} steps after 3 warm-up steps; device {rows[0]['device']} "
        f"({rows[0]['torch_threads']} threads). Peak memory: see benchmarks/methods.py.\n\n"
    )
    args.out.write_text(header + table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
