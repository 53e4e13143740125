"""ftlab against a hand-written PyTorch + peft loop and against TRL: time per step, tokens/s, peak memory.

    python benchmarks/run.py                 # every comparison (one process each), then benchmarks/RESULTS.md
    python benchmarks/run.py --pair trl_dpo  # one comparison: benchmarks/results/trl_dpo.json, then RESULTS.md
    python benchmarks/run.py --report        # RESULTS.md from the JSON files already in benchmarks/results/
    python benchmarks/run.py --quick         # a smoke run of every comparison (1 round, 2 steps); writes nothing

Comparisons (`PAIRS`; the shared setup is in `common.py`, the contenders in `contenders.py` and `trl_side.py`):
hand_lora / hand_full: the hand-written loop against ftlab SFT (LoRA; full fine-tuning); trl_sft: TRL
SFTTrainer against ftlab SFT (LoRA); trl_dpo: TRL DPOTrainer against ftlab DPO (LoRA, reference = adapters
off), with ftlab SFT on the same rows as DPO's memory baseline; trl_grpo: TRL GRPOTrainer against ftlab
GRPO (LoRA), and ftlab GRPO with `merge_for_sampling=True`; scaling: ftlab SFT + LoRA over sequence
lengths and batch sizes.

How: within a comparison, every contender runs `--rounds` times, the sides interleaved (A B, then B A, ...) in
one process, each run a fresh model, so load on the shared machine hits both sides alike. A run is `--warmup`
steps, then `--steps` timed steps: seconds per step is the median of the step-end to step-end times (the whole
loop: data, forward, reference, generation, backward, optimizer, logging); the table gives the median over
rounds of those medians. CPU s/step: the same intervals in this process's CPU time (`time.process_time`, one
torch thread): on a machine shared with other jobs (load average above the core count) wall time mostly measures
the share of the cores a run got, CPU time the work it did, so the targets are judged on CPU time (wall time is
given beside it). Non-padding tokens per step: the attention mask's ones of the batch (GRPO: G copies of
each prompt plus the completion tokens up to EOS). In the first round each run adds one step under the memory
probe (peak tensor MB, `common.py`) and two under torch.profiler (top ATen ops by self CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c

RESULTS = c.HERE / "results"
PAIRS: dict[str, tuple[str, ...]] = {
    "hand_lora": ("hand_lora", "ftlab_sft_lora"),
    "hand_full": ("hand_full", "ftlab_sft_full"),
    "trl_sft": ("trl_sft", "ftlab_sft_lora"),
    "trl_dpo": ("trl_dpo", "ftlab_dpo"),
    "trl_grpo": ("trl_grpo", "ftlab_grpo", "ftlab_grpo_merged", "ftlab_grpo_static"),
}
MEMORY_ONLY = {"trl_dpo": ("ftlab_sft_pairs",)}
SCALING = [(64, 8), (128, 8), (256, 8), (256, 4), (256, 2)]  # (sequence length, batch size)
TARGETS: dict[str, tuple[str, float]] = {  # pair -> (which way, bound) on baseline s/step over ftlab s/step
    "hand_lora": (">=", 1 / 1.05),
    "hand_full": (">=", 1 / 1.05),
    "trl_sft": (">=", 1.3),
    "trl_dpo": (">=", 1.3),
    "trl_grpo": (">=", 1.5),
}


def runner(name: str) -> Any:
    import contenders
    import trl_side

    if name.startswith("hand"):
        return contenders.hand_loop
    if name.startswith("trl"):
        return getattr(trl_side, name)
    return getattr(contenders, name.rsplit("_", 1)[0] if name.count("_") > 1 else name)


def measure_pair(pair: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    sides = PAIRS[pair]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    load = [os.getloadavg()]
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for name in order:
            first = r == 0
            result = runner(name)(name, args.warmup, args.steps, memory=first, profile=first and args.profile)
            result["load_average"] = os.getloadavg()
            runs[name].append(result)
            print(f"{pair} round {r} {name}: {result['step_seconds']:.3f} s/step", flush=True)
    for name in MEMORY_ONLY.get(pair, ()):
        runs[name] = [runner(name)(name, args.warmup, 1, memory=True, profile=False)]
    load.append(os.getloadavg())
    return {"pair": pair, "runs": runs, "load_average": load, **meta(args)}


def measure_scaling(args: argparse.Namespace) -> dict[str, Any]:
    import contenders
    import torch

    torch.set_num_threads(args.threads)
    cells = []
    load = [os.getloadavg()]
    for seq, batch in SCALING:
        result = contenders.ftlab_sft("ftlab_sft_lora", args.warmup, args.steps, True, False, seq=seq, batch=batch)
        cells.append({"seq": seq, "batch": batch, **result})
        print(f"scaling seq {seq} batch {batch}: {result['tokens_per_second']:.0f} tokens/s", flush=True)
    load.append(os.getloadavg())
    return {"pair": "scaling", "cells": cells, "load_average": load, **meta(args)}


def meta(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import version

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=c.REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "ftlab"], capture_output=True, text=True, cwd=c.REPO)
    pkgs = ("torch", "transformers", "peft", "lightning", "trl")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": commit.stdout.strip() + (" + uncommitted ftlab changes" if dirty.stdout.strip() else ""),
        "versions": {p: version(p) for p in pkgs},
        "threads": args.threads,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "steps": args.steps,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", choices=[*PAIRS, "scaling"], help="run one comparison in this process")
    parser.add_argument("--report", action="store_true", help="only write RESULTS.md from results/*.json")
    parser.add_argument("--quick", action="store_true", help="1 round, 1+2 steps, nothing written")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.steps = 1, 1, 2
    if args.report:
        return write_report()
    if args.pair is None:
        for pair in [*PAIRS, "scaling"]:
            cmd = [sys.executable, __file__, "--pair", pair, "--rounds", str(args.rounds)]
            cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads)]
            cmd += ["--quick"] * args.quick + ["--no-profile"] * (not args.profile)
            subprocess.run(cmd, check=False)
        return None if args.quick else write_report()
    warnings.filterwarnings("ignore")
    import logging

    for name in ("ftlab", "lightning", "lightning.pytorch", "lightning.fabric", "transformers", "trl", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    result = measure_scaling(args) if args.pair == "scaling" else measure_pair(args.pair, args)
    if not args.quick:
        c.write_json(RESULTS / f"{args.pair}.json", result)
        write_report()
    else:
        print(json.dumps(result, default=str)[:3000])
    return None


def write_report() -> None:
    from report import render

    found = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    (c.HERE / "RESULTS.md").write_text(render(found, PAIRS, TARGETS))
    print(f"wrote {c.HERE / 'RESULTS.md'} from {', '.join(found)}")


def median_step(runs: list[dict[str, Any]]) -> float:
    return statistics.median(r["step_seconds"] for r in runs)


if __name__ == "__main__":
    main()
