"""RESULTS.md from the JSON files `run.py` writes (one per comparison): tables, ratios against targets, profiles."""

from __future__ import annotations

import statistics
from typing import Any

import common as c

TITLES = {
    "hand_lora": "Hand-written PyTorch + peft loop vs ftlab: SFT + LoRA",
    "hand_full": "Hand-written PyTorch loop vs ftlab: SFT, full fine-tuning",
    "trl_sft": "TRL SFTTrainer vs ftlab SFT (LoRA)",
    "trl_dpo": "TRL DPOTrainer vs ftlab DPO (LoRA)",
    "trl_grpo": "TRL GRPOTrainer vs ftlab GRPO (LoRA)",
}
DATA = {
    "hand_lora": "GPTeacher roleplay instructions, ftlab's chat rendering, loss on answers, rows <= 256, batch 8",
    "hand_full": "as hand_lora",
    "trl_sft": "as hand_lora",
    "trl_dpo": "HH-RLHF harmless-base test pairs, prompt <= 128, rows <= 256, 4 pairs (8 rows) per step",
    "trl_grpo": "ftlab's synthetic prompts (chat template), 8 prompts x G = 4, <= 32 new tokens, TokenShare(' the')",
}


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _load(result: dict[str, Any]) -> str:
    return " -> ".join("/".join(f"{x:.1f}" for x in la) for la in result["load_average"])


def pair_section(pair: str, result: dict[str, Any], targets: dict[str, tuple[str, float]]) -> tuple[str, str]:
    runs = result["runs"]
    sides = [s for s in runs if runs[s][0].get("steps_timed", 0) > 1]
    base = sides[0]
    cpu = all("cpu_seconds" in r for side in sides for r in runs[side])
    key = "cpu_seconds" if cpu else "step_seconds"
    rows = [
        "| contender | wall s/step (median of rounds) | per-round medians | CPU s/step | non-pad tokens/step "
        f"| tokens/s (wall) | peak tensor MB | {base} / contender, wall | {base} / contender, CPU |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for side in sides:
        step = _median(runs[side], "step_seconds")
        cpu_step = _median(runs[side], "cpu_seconds") if cpu else float("nan")
        rounds = ", ".join(f"{r['step_seconds']:.3f}" for r in runs[side])
        peak = runs[side][0].get("peak_mb", float("nan"))
        tokens, per_second = _median(runs[side], "tokens_per_step"), _median(runs[side], "tokens_per_second")
        wall_ratio = _median(runs[base], "step_seconds") / step
        cpu_ratio = _median(runs[base], "cpu_seconds") / cpu_step if cpu else float("nan")
        rows.append(
            f"| {side} | {step:.3f} | {rounds} | {cpu_step:.3f} | {tokens:.0f} | {per_second:.0f} | {peak:.1f} "
            f"| {wall_ratio:.2f} | {cpu_ratio:.2f} |"
        )
    ftlab = sides[1]
    paired = [b[key] / f[key] for b, f in zip(runs[base], runs[ftlab], strict=False)]
    ratio = _median(runs[base], key) / _median(runs[ftlab], key)
    wall = _median(runs[base], "step_seconds") / _median(runs[ftlab], "step_seconds")
    bound = targets[pair][1]
    met = ratio >= bound
    text = [
        f"## {TITLES[pair]}",
        "",
        f"Data: {DATA[pair]}. Load average (1/5/15 min) at start -> end: {_load(result)}; "
        f"{result['rounds']} rounds x ({result['warmup']} warm-up + {result['steps']} timed steps), "
        f"{result['threads']} torch thread(s).",
        "",
        *rows,
        "",
        f"{base} / {ftlab} per round (paired, {'CPU' if cpu else 'wall'} time): "
        f"{', '.join(f'{x:.2f}' for x in paired)}.",
    ]
    if pair == "trl_dpo" and "ftlab_sft_pairs" in runs:
        sft, dpo = runs["ftlab_sft_pairs"][0]["peak_mb"], runs["ftlab_dpo"][0]["peak_mb"]
        text += [
            "",
            f"Memory: ftlab DPO peak {dpo:.1f} MB against ftlab SFT + LoRA on the same 8 rows per step {sft:.1f} MB: "
            f"DPO / SFT = **{dpo / sft:.3f}** (target <= 1.15).",
        ]
    text += ["", profile_block(runs, sides)]
    goal = f"{bound:.2f}" if pair.startswith("trl") else "0.95 (ftlab <= 1.05x the loop)"
    measure = "CPU" if cpu else "wall"
    summary = (
        f"| {TITLES[pair]} | {base} / {ftlab} = **{ratio:.2f}** ({measure}); wall {wall:.2f} | >= {goal} "
        f"| {'met' if met else 'missed'} |"
    )
    return "\n".join(text), summary


def profile_block(runs: dict[str, list[dict[str, Any]]], sides: list[str]) -> str:
    out = []
    for side in sides:
        prof = runs[side][0].get("profile")
        if not prof:
            continue
        share = prof["aten_ms"] / prof["wall_ms"]
        top = ", ".join(f"`{op.removeprefix('aten::')}` {ms:.0f}" for op, ms, _ in prof["top"][:8])
        out.append(
            f"- **{side}** (torch.profiler, 2 steps): wall {prof['wall_ms']:.0f} ms/step, ATen ops "
            f"{prof['aten_ms']:.0f} ms ({share:.0%}); top ops, self ms/step: {top}"
        )
    return "\n".join(out)


def scaling_section(result: dict[str, Any]) -> str:
    cells = result["cells"]
    base = cells[0]
    rows = [
        "| seq | batch | non-pad tokens/step | s/step | tokens/s | s per 1k tokens | peak tensor MB | activations MB "
        "per 1k tokens |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        k = cell["tokens_per_step"] / 1000
        rows.append(
            f"| {cell['seq']} | {cell['batch']} | {cell['tokens_per_step']:.0f} | {cell['step_seconds']:.3f} "
            f"| {cell['tokens_per_second']:.0f} | {cell['step_seconds'] / k:.3f} | {cell['peak_mb']:.1f} "
            f"| {cell['step_peak_mb'] / k:.1f} |"
        )
    return "\n".join(
        [
            "## Scaling: ftlab SFT + LoRA against sequence length and batch size",
            "",
            f"One run per cell ({result['warmup']} warm-up + {result['steps']} timed steps), rows cut at `seq` "
            f"(GPTeacher rows are often shorter: the tokens column counts what is there). Load average: "
            f"{_load(result)}. Linear cost means a flat 's per 1k tokens' and 'activations MB per 1k tokens' "
            f"(the peak above the training state, {base['state_mb']:.1f} MB of weights, LoRA gradients and "
            "AdamW moments); attention's quadratic part is small at these lengths.",
            "",
            *rows,
        ]
    )


def render(found: dict[str, Any], pairs: dict[str, tuple[str, ...]], targets: dict[str, tuple[str, float]]) -> str:
    any_result = next(iter(found.values()))
    sections, summary = [], []
    for pair in pairs:
        if pair in found:
            text, line = pair_section(pair, found[pair], targets)
            sections.append(text)
            summary.append(line)
    if "scaling" in found:
        sections.append(scaling_section(found["scaling"]))
    versions = ", ".join(f"{k} {v}" for k, v in any_result["versions"].items())
    head = [
        "# Benchmarks: ftlab against a hand-written loop and TRL",
        "",
        "Written by `python benchmarks/run.py` (how each number is measured: its docstring and `common.py`'s). "
        f"Backbone: Llama-shaped, built from config {c.BACKBONE}, vocab {c.VOCAB} (ftlab's offline BPE), seed "
        f"{c.SEED}, float32, sdpa attention; LoRA r={c.LORA['r']}, alpha={c.LORA['alpha']:g}, dropout 0, all linear "
        f"layers but the head; AdamW lr {c.LR}, weight decay 0. CPU ({any_result['cpus']} cores shared with other "
        f"jobs: targets are judged on CPU seconds per step, see run.py). Code: {any_result['commit']}; {versions}. "
        "Dates: " + ", ".join(sorted({f"{k} {v['date']}" for k, v in found.items()})),
        "",
        "| comparison | ratio of s/step (CPU time; wall time) | target | |",
        "|---|---:|---:|---|",
        *summary,
        "",
    ]
    return "\n".join([*head, "\n\n".join(sections), ""])
