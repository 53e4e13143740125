"""ftlab against a hand-written PyTorch loop on one accelerator: Full and LoRA, eager and compiled.

    python benchmarks/gpu.py                 # on a GPU: the 1B Llama-shaped model, writes benchmarks/GPU.md
    python benchmarks/gpu.py --tiny --out /tmp/gpu.md   # a small model on the CPU (the test suite's smoke run)

Model: Llama-shaped, built from config with random weights (no download): hidden 2048, intermediate 8192,
16 blocks, 32 heads, 8 kv heads, untied head, vocabulary 32,000 (1.0B parameters); `--tiny` uses hidden 64,
2 blocks, vocabulary 1,024. Data: rows of `--seq` random token ids (2,048 on a GPU), batch `--batch`, no
padding, every token a label (language modelling; token values do not change the cost). Both sides train
the same model with AdamW (fused on CUDA), bf16 autocast over fp32 weights on CUDA (fp32 on the CPU), sdpa.
LoRA: r = 16 on every linear layer of the blocks (peft). Compiled: the hand loop compiles the whole model
with `torch.compile`; ftlab compiles each block (`model.compile: true`).

Timing: the median of the step times after `--warmup` steps (each step ended by a device synchronise).
tokens/s = batch × seq / median step. MFU = tokens/s × F / peak, F = 6N + 12·L·d·T FLOPs per token for
full fine-tuning and 4N + 8·L·d·T for LoRA (no weight gradients of the frozen base), N the parameter count,
L blocks, d hidden size, T sequence length; peak = `--peak_tflops` (989.4, H100/H200 dense bf16). Memory:
`torch.cuda.max_memory_allocated` over the timed run (none on the CPU).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

LLAMA_1B: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
TINY: dict[str, Any] = LLAMA_1B | {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 256,
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def model_folder(config: dict[str, Any], root: Path) -> Path:
    """The model, random weights of seed 0, saved once so both sides load the same folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = root / "model"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        cfg = AutoConfig.for_model(**config)
        AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(folder)
    return folder


def tokenizer_folder(root: Path) -> Path:
    """ftlab's offline BPE tokenizer (ftlab needs one; the data below are token ids, not text)."""
    from ftlab.models import TinyBackbone

    folder = root / "tokenizer"
    if not folder.exists():
        TinyBackbone(config={"model_type": "llama"}, vocab_size=512).load_tokenizer().save_pretrained(folder)
    return folder


def batches(n: int, batch: int, seq: int, vocab: int) -> list[Any]:
    from ftlab.batches import SFTBatch

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (batch, seq), generator=g)
        out.append(SFTBatch(input_ids=ids, labels=ids.clone(), num_tokens=batch * seq, num_loss_tokens=batch * seq))
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hand_loop(folder: Path, data: list[Any], device: torch.device, lora: bool, compiled: bool) -> list[float]:
    """The loop a researcher writes: model, (peft), AdamW, autocast, loss from the model, backward, step."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").to(device)
    model.config.use_cache = False
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    step_model = torch.compile(model) if compiled else model
    times = []
    for batch in data:
        start = time.perf_counter()
        ids = batch.input_ids.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = step_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class StepTimes:
    """A Lightning callback: the wall time of each training step, ended by a device synchronise."""

    def __new__(cls, device: torch.device) -> Any:
        import lightning.pytorch as pl

        class _Times(pl.Callback):
            def __init__(self) -> None:
                self.times: list[float] = []
                self._start = 0.0

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                self._start = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                synchronize(device)
                self.times.append(time.perf_counter() - self._start)

        return _Times()


def ftlab_fit(
    folder: Path, tok: Path, data: list[Any], device: torch.device, lora: bool, compiled: bool
) -> list[float]:
    """`ftlab fit` in process: the same model folder, the same batches, the module's own optimizer setup."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from ftlab.methods import Full, LoRA
    from ftlab.models import Pretrained
    from ftlab.module import FineTuneModule
    from ftlab.objectives import SFT

    method = LoRA(r=16, alpha=32, target_modules=TARGETS) if lora else Full()
    fused = device.type == "cuda"
    module = FineTuneModule(
        Pretrained(str(folder), tokenizer=str(tok)),
        method,
        SFT(),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5, fused=fused),
        compile=compiled,
    )
    times = StepTimes(device)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            default_root_dir=root,
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed" if device.type == "cuda" else "32-true",
            max_steps=len(data),
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            log_every_n_steps=10,
            callbacks=[times],
        )
        trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None, shuffle=False))
    return times.times


def flops_per_token(n_params: int, config: dict[str, Any], seq: int, lora: bool) -> float:
    layers, d = config["num_hidden_layers"], config["hidden_size"]
    return (4 * n_params + 8 * layers * d * seq) if lora else (6 * n_params + 12 * layers * d * seq)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    config = TINY if args.tiny else LLAMA_1B
    root = Path(args.cache)
    folder, tok = model_folder(config, root), tokenizer_folder(root)
    n_params = sum(p.numel() for p in load_file(folder / "model.safetensors").values())
    data = batches(args.warmup + args.steps, args.batch, args.seq, config["vocab_size"])
    rows = []
    for lora in (False, True):
        for compiled in (False, True) if args.compile else (False,):
            for side in ("hand loop", "ftlab"):
                torch._dynamo.reset()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                if side == "ftlab":
                    times = ftlab_fit(folder, tok, data, device, lora, compiled)
                else:
                    times = hand_loop(folder, data, device, lora, compiled)
                step = statistics.median(times[args.warmup :])
                tokens = args.batch * args.seq / step
                mfu = tokens * flops_per_token(n_params, config, args.seq, lora) / (args.peak_tflops * 1e12)
                rows.append(
                    {
                        "run": f"{side}, {'LoRA' if lora else 'full'}, {'compiled' if compiled else 'eager'}",
                        "s/step": step,
                        "tokens/s": tokens,
                        "MFU": mfu if device.type == "cuda" else None,
                        "peak GiB": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                    }
                )
                print(rows[-1], flush=True)
    return rows


def versions() -> str:
    names = ("torch", "transformers", "peft", "lightning")
    found = {n: importlib.metadata.version(n) for n in names}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return f"{device}; " + ", ".join(f"{k} {v}" for k, v in found.items())


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# ftlab vs a hand-written loop on one accelerator",
        "",
        f"Model: {'tiny (--tiny)' if args.tiny else 'Llama-shaped 1B from config'}; batch {args.batch} × {args.seq}"
        f" tokens; median of {args.steps} steps after {args.warmup} warm-up steps. {versions()}.",
        "MFU = tokens/s × (6N + 12·L·d·T) / peak for full, (4N + 8·L·d·T) for LoRA; peak "
        f"{args.peak_tflops} TFLOP/s. See benchmarks/gpu.py for the method.",
        "",
        "| run | s/step | tokens/s | MFU | peak memory (GiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        mfu = f"{100 * r['MFU']:.1f} %" if r["MFU"] is not None else "–"
        mem = f"{r['peak GiB']:.1f}" if r["peak GiB"] is not None else "–"
        lines.append(f"| {r['run']} | {r['s/step']:.4f} | {r['tokens/s']:,.0f} | {mfu} | {mem} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a small model on the CPU (smoke run)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--no_compile", dest="compile", action="store_false", help="eager runs only")
    parser.add_argument("--peak_tflops", type=float, default=989.4)
    parser.add_argument("--out", default=str(HERE / "GPU.md"))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "ftlab-gpu-bench"))
    args = parser.parse_args(argv)
    defaults = (2, 32, 3, 2) if args.tiny else (8, 2048, 20, 5)
    for name, value in zip(("batch", "seq", "steps", "warmup"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    rows = measure(args)
    Path(args.out).write_text(report(rows, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
