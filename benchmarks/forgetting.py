"""Catastrophic forgetting: does EWC keep general text better than plain SFT, at a small cost on the task?

    nice python benchmarks/forgetting.py [--out runs/bench_forgetting] [--pretrain-steps 500] [--steps 150]

1. Pretrains a tiny Llama-shaped base (hidden 128, 4 layers, BPE vocabulary 2048 trained on the text)
   on general text: WikiText-2 raw (the shared folder has the test split only; its last 10%, whole
   articles, is held out), every token labelled (`ftlab.data.text.TextDataModule`, rows of 128 tokens).
2. Fine-tunes that base (`ftlab.chain.FromRun`) on GPTeacher roleplay (SFT, rows of 128 tokens) for
   the same number of steps with: plain SFT (Full), SFT + EWC at two strengths, SFT + L2-SP, LoRA and
   Freeze (last block). The EWC Fisher is the LM loss's empirical Fisher on 64 WikiText training rows.
   The first EWC strength makes the penalty half the loss at plain SFT's end point:
   λ/2 · Σ F (θ_plain − θ*)² = 0.5 · loss_plain; the second is 10 times that. L2-SP is set the same
   two ways (with F ≡ 1), so EWC is compared with it along the same trade-off.
3. Every run carries two ForgettingProbes: `forget/*` on the held-out WikiText tail and `task/*` on
   the GPTeacher validation rows (so the task loss before fine-tuning is measured too).
Writes benchmarks/FORGETTING.md. Each run is a plain run folder with its config; reruns skip runs
with a DONE marker. One thread (the machine's cores are shared): about 15 minutes in all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
WIKI = str(SHARED / "wikitext-2" / "wiki.test.raw")
GPTEACHER = str(SHARED / "gpteacher" / "roleplay-simple-deduped-roleplay-instruct.json")
SEQ = 128
LR = 1e-3

WIKI_DATA = {
    "class_path": "ftlab.data.text.TextDataModule",
    "init_args": {"train": WIKI, "holdout_tail": 0.1, "batch_size": 16, "max_length": SEQ},
}
TASK_DATA = {
    "class_path": "ftlab.data.SFTDataModule",
    "init_args": {"train": GPTEACHER, "output_field": "response", "val_fraction": 0.05, "batch_size": 8},
}
TASK_DATA["init_args"]["max_length"] = SEQ


def trainer(root: Path, steps: int, callbacks: list[dict]) -> dict:
    return {
        "default_root_dir": str(root),
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": steps,
        "max_epochs": 100,
        "num_sanity_val_steps": 0,
        "val_check_interval": steps,  # validate once, on the final weights
        "check_val_every_n_epoch": None,
        "log_every_n_steps": 10,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root)}}],
        "callbacks": callbacks,
    }


def optimizer(lr: float) -> dict:
    return {"class_path": "torch.optim.AdamW", "init_args": {"lr": lr, "weight_decay": 0.0}}


def schedule(warmup: int) -> dict:
    return {"class_path": "ftlab.schedules.WarmupCosine", "init_args": {"warmup_steps": warmup, "min_lr_ratio": 0.1}}


def fit(config: dict, root: Path) -> dict:
    """One run through the CLI, from a config file written into its folder (replayable by hand)."""
    from ftlab.cli import FTLabCLI

    if not (root / "DONE").exists():
        root.mkdir(parents=True, exist_ok=True)
        path = root.parent / f"{root.name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        started = time.perf_counter()
        FTLabCLI(args=["fit", "--config", str(path)])
        print(f"{root.name}: {time.perf_counter() - started:.0f}s", flush=True)
    return json.loads((root / "summary.json").read_text())


def pretrain(out: Path, steps: int) -> Path:
    root = out / "base"
    backbone = {
        "class_path": "ftlab.models.TinyBackbone",
        "init_args": {
            "config": {
                "model_type": "llama",
                "hidden_size": 128,
                "intermediate_size": 384,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 512,
                "tie_word_embeddings": True,
            },
            "vocab_size": 2048,
            "corpus": [WIKI],
        },
    }
    config = {
        "seed_everything": 0,
        "trainer": trainer(root, steps, []),
        "model": {
            "backbone": backbone,
            "method": {"class_path": "ftlab.methods.Full"},
            "objective": {"class_path": "ftlab.objectives.SFT"},
            "optimizer": optimizer(3e-3),
            "scheduler": schedule(30),
        },
        "data": WIKI_DATA,
    }
    fit(config, root)
    return root


def probes() -> list[dict]:
    return [
        {
            "class_path": "ftlab.callbacks.ForgettingProbe",
            "init_args": {"data": WIKI_DATA, "max_length": SEQ, "max_tokens": 32768, "batch_size": 16},
        },
        {
            "class_path": "ftlab.callbacks.ForgettingProbe",
            "init_args": {"data": TASK_DATA, "max_tokens": 1 << 20, "batch_size": 16, "prefix": "task"},
        },
    ]


def finetune(
    out: Path, base: Path, name: str, steps: int, method: dict, regularizers: list[dict], lr: float, seed: int = 0
) -> dict:
    root = out / name
    config = {
        "seed_everything": seed,
        "trainer": trainer(root, steps, probes()),
        "model": {
            "backbone": {"class_path": "ftlab.chain.FromRun", "init_args": {"run": str(base)}},
            "method": method,
            "objective": {"class_path": "ftlab.objectives.SFT"},
            "optimizer": optimizer(lr),
            "scheduler": schedule(10),
            "regularizers": regularizers,
        },
        "data": TASK_DATA,
    }
    return fit(config, root)


def ewc(strength: float) -> dict:
    return {
        "class_path": "ftlab.regularizers.EWC",
        "init_args": {"data": WIKI_DATA, "strength": strength, "samples": 64},
    }


def drift(base: Path, plain: Path) -> tuple[float, float]:
    """(Σ F (θ_plain − θ*)², Σ (θ_plain − θ*)²) with F the EWC Fisher the EWC runs use (estimated here, cached)."""
    from ftlab.chain import FromRun
    from ftlab.data.text import TextDataModule
    from ftlab.methods import Full
    from ftlab.module import FineTuneModule
    from ftlab.objectives import SFT
    from ftlab.regularizers import EWC
    from ftlab.regularizers.fisher_estimate import FisherEstimate
    from ftlab.runfolder import load_weights

    reg = EWC(data=TextDataModule(**WIKI_DATA["init_args"]), samples=64)
    module = FineTuneModule(FromRun(str(base)), Full(), SFT(), regularizers=[reg])
    module.configure_model()
    params = module.method.trainable_parameters(module.model)
    fisher = FisherEstimate(reg).estimate(module, params)
    end = {k.removeprefix("model."): v for k, v in load_weights(plain / "trainable.safetensors").items()}
    weighted = sum(float((fisher[n] * (end[n] - p.detach()).square()).sum()) for n, p in params.items())
    plain_sq = sum(float((end[n] - p.detach()).square().sum()) for n, p in params.items())
    return weighted, plain_sq


def row(name: str, s: dict, note: str) -> str:
    m = s["metrics"]
    task_loss = math.log(m["task/ppl"])
    return (
        f"| {name} | {note} | {s['trainable_params']:,} | {m['forget/ppl_before']:.1f} | {m['forget/ppl']:.1f} | "
        f"{m['forget/delta_ppl']:+.1f} | {math.log(m['task/ppl_before']):.3f} | {task_loss:.3f} | "
        f"{m.get('train/reg/ewc', m.get('train/reg/l2sp', 0.0)):.3f} | {s['wall_seconds']:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_forgetting")
    parser.add_argument("--pretrain-steps", type=int, default=500)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("FTLAB_CACHE", str(args.out / "cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    out = args.out
    base = pretrain(out, args.pretrain_steps)
    base_summary = json.loads((base / "summary.json").read_text())
    full = {"class_path": "ftlab.methods.Full"}
    runs: dict[str, tuple[str, dict, str]] = {}  # cell -> (row label, summary, note)
    plain = finetune(out, base, "sft", args.steps, full, [], LR)
    runs["sft"] = ("SFT (Full)", plain, "")
    weighted, plain_sq = drift(base, out / "sft")
    loss_end = plain["val_loss"]
    lam = loss_end / weighted  # λ/2 · S_F = 0.5 · loss
    lam_l2 = loss_end / plain_sq
    for cell, strength, note in (("ewc", lam, "λ: half the loss at SFT's end"), ("ewc_x10", 10 * lam, "10× that")):
        runs[cell] = (
            f"SFT + EWC λ={strength:.3g}",
            finetune(out, base, cell, args.steps, full, [ewc(strength)], LR),
            note,
        )
    for cell, strength, note in (("l2sp", lam_l2, "same rule, F ≡ 1"), ("l2sp_x10", 10 * lam_l2, "10× that")):
        l2 = [{"class_path": "ftlab.regularizers.L2SP", "init_args": {"strength": strength}}]
        runs[cell] = (f"SFT + L2-SP λ={strength:.3g}", finetune(out, base, cell, args.steps, full, l2, LR), note)
    lora = {"class_path": "ftlab.methods.LoRA", "init_args": {"r": 8, "alpha": 16, "target_modules": "all-linear"}}
    runs["lora"] = ("LoRA r=8", finetune(out, base, "lora", args.steps, lora, [], LR), "all linear layers")
    freeze = {"class_path": "ftlab.methods.Freeze", "init_args": {"last_blocks": 1}}
    runs["freeze"] = ("Freeze", finetune(out, base, "freeze", args.steps, freeze, [], LR), "last block + final norm")
    # a second data order for the three rows the claim rests on
    l2 = [{"class_path": "ftlab.regularizers.L2SP", "init_args": {"strength": lam_l2}}]
    for cell, label, regs in (
        ("sft", "SFT (Full)", []),
        ("ewc", runs["ewc"][0], [ewc(lam)]),
        ("l2sp", runs["l2sp"][0], l2),
    ):
        runs[f"{cell}_s1"] = (
            f"{label}, seed 1",
            finetune(out, base, f"{cell}_s1", args.steps, full, regs, LR, 1),
            "data order 2",
        )
    fits = base_summary["wall_seconds"] + sum(s["wall_seconds"] for _, s, _ in runs.values())
    print(f"this invocation: {time.perf_counter() - started:.0f}s", flush=True)
    report(out, base_summary, runs, args, weighted, plain_sq, loss_end, fits)


READING = """## Reading (of the run recorded above; one model, one task, two data orders)

- Kirkpatrick et al.'s claim holds against plain SFT: EWC at the calibrated strength keeps more than
  half of the forgetting away (Δppl on held-out WikiText +48 against +109; +44 against +101 in the
  second data order) for +0.11 nats of GPTeacher loss; ten times stronger, +31.5 for +0.37.
- Most of that is the quadratic pull to the start, not the Fisher: L2-SP, calibrated by the same rule,
  lies on nearly the same trade-off curve. At the calibrated strength EWC forgets 3.5-4 ppl less than
  L2-SP at the same task loss, in both data orders (about the spread between the two orders); at ten
  times the strength L2-SP, interpolated to EWC's task loss, forgets 3 ppl less. At this scale
  (1M parameters, 64 Fisher samples of 128 tokens, 150 steps) the Fisher's weighting buys little over
  uniform weighting.
- LoRA (r=8) and Freeze (last block) at the same steps and learning rate forget about as little as
  EWC ×10 (+33, +35) but learn the task far less (4.93, 4.86 against 4.52): here both regularizers
  at ×10 give less forgetting and a lower task loss than either. One learning rate (1e-3) for every
  row; LoRA usually takes a higher one, which would move it along the same trade-off.
- The penalty column is the last logged value: calibrated to half the loss at plain SFT's end point,
  it ends near 0.19 (4% of the loss) because the regularized run stays much closer to θ*.
"""


def forgetting_and_task(s: dict) -> tuple[float, float]:
    """(Δ perplexity on general text, task loss after) of a run."""
    return s["metrics"]["forget/delta_ppl"], math.log(s["metrics"]["task/ppl"])


def findings(cells: dict[str, dict]) -> list[str]:
    """Sentences computed from the table: EWC against plain SFT, and against L2-SP at the same task loss."""
    (d_sft, t_sft), out = forgetting_and_task(cells["sft"]), []
    for cell in ("ewc", "ewc_x10"):
        d, t = forgetting_and_task(cells[cell])
        out.append(
            f"- {cell}: forgetting Δppl {d:+.1f} against plain SFT's {d_sft:+.1f} ({d / d_sft:.0%} of it), "
            f"task loss {t - t_sft:+.3f} against plain SFT."
        )
        (d1, t1), (d2, t2) = forgetting_and_task(cells["l2sp"]), forgetting_and_task(cells["l2sp_x10"])
        if min(t1, t2) <= t <= max(t1, t2):  # L2-SP's line between its two strengths, at EWC's task loss
            at = d1 + (d2 - d1) * (t - t1) / (t2 - t1)
            out.append(f"  L2-SP at the same task loss (interpolated between its two strengths): Δppl {at:+.1f}.")
        else:
            out.append(f"  (outside L2-SP's measured range of task loss, {min(t1, t2):.3f}..{max(t1, t2):.3f})")
    for cell in ("sft", "ewc", "l2sp"):
        (d0, t0), (d1, t1) = forgetting_and_task(cells[cell]), forgetting_and_task(cells[f"{cell}_s1"])
        out.append(f"- {cell}, seeds 0 and 1 (data order): Δppl {d0:+.1f} / {d1:+.1f}, task loss {t0:.3f} / {t1:.3f}.")
    return out


def report(
    out: Path,
    base_summary: dict,
    runs: dict[str, tuple[str, dict, str]],
    args: argparse.Namespace,
    weighted: float,
    plain_sq: float,
    loss_end: float,
    seconds: float,
) -> None:
    lines = [
        "# Forgetting: plain SFT, EWC, L2-SP, LoRA and Freeze on a tiny base pretrained here",
        "",
        "Written by `nice python benchmarks/forgetting.py` (see its docstring for the setup); "
        f"{seconds / 60:.1f} minutes of fit time in all (one CPU thread, shared machine).",
        "",
        f"Base: tiny Llama (hidden 128, 4 layers, {base_summary['total_params']:,} parameters), pretrained "
        f"{base_summary['steps']} steps × 16 rows × {SEQ} tokens on WikiText-2 raw (all but the last 10%): "
        f"held-out val loss {base_summary['val_loss']:.3f} (ppl {base_summary['val_ppl']:.1f}).",
        f"Fine-tuning: GPTeacher roleplay SFT, {args.steps} steps × 8 rows × ≤{SEQ} tokens, AdamW lr {LR:g}, "
        "warmup 10 then cosine to 10%, seed 0 (data order) unless the row says otherwise.",
        "`forget`: perplexity on the held-out WikiText tail (first 32K tokens), before → after. "
        "`task`: GPTeacher validation answer loss (5% held out), before → after. "
        "`penalty`: the regularizer's last logged value.",
        "",
        "| run | note | trainable | forget ppl before | after | Δ ppl | task loss before | after | penalty | s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [row(label, s, note) for label, s, note in runs.values()]
    lines += [
        "",
        f"Calibration: plain SFT ended at val loss {loss_end:.3f}; at its end point Σ F (θ − θ*)² = {weighted:.4g} "
        f"and Σ (θ − θ*)² = {plain_sq:.4g}, which set the EWC and L2-SP strengths above.",
        "",
        "## Measured comparisons",
        "",
        *findings({cell: s for cell, (_, s, _) in runs.items()}),
        "",
        READING,
    ]
    (REPO / "benchmarks" / "FORGETTING.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
