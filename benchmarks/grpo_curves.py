"""Matched learning curves: ftlab's GRPO against TRL's GRPOTrainer, same setup, several seeds per side.

Run from anywhere (it works in the repository root):

    python benchmarks/grpo_curves.py [--steps 100] [--seeds 0 1 2] [--root runs/bench/grpo_curves]
                                     [--out benchmarks/GRPO_CURVES.md]

What it measures: the mean reward of every optimizer step's rollout batch, for ftlab's `GRPO` (Lightning,
`FineTuneModule`) and TRL's `GRPOTrainer`, each run once per seed, and writes `--out` (mean over seeds and
spread across seeds per 10-step window, per-seed first-10 and last-10 means, wall and CPU seconds per step).

1. Start model: the quickstart (tiny Llama, full SFT on the bundled instructions) trained and exported with
   `ftlab export`, exactly as `rl_learning.py`'s `pretrain` does, so the policy already writes text.
2. Task: the prompts of `ftlab/assets/synthetic_prompts.jsonl` (chat template, file order, ftlab's token ids on
   both sides, as `trl_side.trl_grpo` does); reward `ftlab.rewards.TokenShare` on " the" (the share of a
   completion's tokens equal to it, EOS included when it ends the completion), through `common.CountingReward`
   on both sides; its mean over the step's completions is the curve (one reward call per optimizer step on
   both sides, so step k of one side is step k of the other).
3. Both sides: LoRA from `common` (r 8, alpha 16, dropout 0, all linear layers but the head), AdamW with no
   weight decay at a constant rate, the GRPO settings in `SETTINGS` below, matched one to one (the written
   table says which ftlab argument is which TRL argument). Seeds: `lightning.seed_everything(seed)` before the
   module is built (ftlab), `GRPOConfig(seed=seed)` (TRL).

Every (side, seed) runs in its own process with one torch thread, one after another; its result is kept as JSON
under `--root` (a run with the same settings is not run again), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common as c

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIDES = ("ftlab", "trl")
WINDOW = 10

# What both sides share. `lr` is rl_learning.py's GRPO rate (the speed benchmarks' 5e-4 barely moves the reward in
# under 100 steps); the rest is common.py's GRPO setup (8 prompts x G 4 per step) with shorter completions (16 new
# tokens, as rl_learning.py) so that 3 seeds x 2 sides x 100 steps fit in minutes on a shared 2-core CPU.
SETTINGS: dict[str, Any] = {
    "prompts_per_step": c.BATCH,
    "num_generations": c.GRPO_G,
    "max_new_tokens": 16,
    "max_prompt_length": c.GRPO_PROMPT_LENGTH,
    "temperature": 1.0,
    "top_p": 1.0,
    "beta": c.GRPO_BETA,
    "epsilon": c.GRPO_EPSILON,
    "lr": 2e-3,
    "max_grad_norm": 1.0,
    "ftlab_loss_level": "token",
    "trl_loss_type": "bnpo",
    "ftlab_kl_estimator": "k3_unbiased",
    "trl_use_bias_correction_kl": True,
    "target": c.TARGET,
}
MATCHED_LOSS = {"token": "bnpo", "sequence": "grpo"}
MATCHED_KL = {"k3_unbiased": True, "k3": False}
assert MATCHED_LOSS[SETTINGS["ftlab_loss_level"]] == SETTINGS["trl_loss_type"]
assert MATCHED_KL[SETTINGS["ftlab_kl_estimator"]] == SETTINGS["trl_use_bias_correction_kl"]


class RecordingReward(c.CountingReward):
    """`common.CountingReward` (TokenShare of the target) that also keeps, per call (= per optimizer step), the
    mean reward, the mean completion length and a fingerprint of the distinct prompts it scored."""

    def __init__(self, token_id: int) -> None:
        super().__init__(token_id)
        self.means: list[float] = []
        self.lengths: list[float] = []
        self.prompt_keys: list[str] = []

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **kw: Any) -> Any:
        out = super().__call__(prompts, completions, completion_ids, **kw)
        self.means.append(statistics.fmean(float(v) for v in out))
        self.lengths.append(statistics.fmean(len(ids) for ids in completion_ids))
        key = "\x00".join(sorted(set(prompts)))
        self.prompt_keys.append(hashlib.sha1(key.encode()).hexdigest()[:12])
        return out


# --------------------------------------------------------------------------- shared pieces
def start_model(root: Path) -> Path:
    """The quickstart trained and exported (rl_learning.py's pretrain; cached under `root`)."""
    import rl_learning

    return rl_learning.pretrain(root)


def tokenizer(model_dir: Path) -> Any:
    from ftlab.models import Pretrained

    return Pretrained(str(model_dir)).load_tokenizer()


def target_id(tok: Any) -> int:
    ids = tok(SETTINGS["target"], add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise SystemExit(f"{SETTINGS['target']!r} is not one token for this tokenizer: {ids}")
    return int(ids[0])


def prompt_data(tok: Any) -> Any:
    """common.prompt_data's prompts (file order, no shuffling, chat template) with the start model's tokenizer."""
    import torch

    from ftlab.data import PromptDataModule

    dm = c._unshuffled(PromptDataModule)(
        train=str(c.PROMPTS),
        batch_size=SETTINGS["prompts_per_step"],
        max_length=SETTINGS["max_prompt_length"],
        seed=c.SEED,
    )
    dm.tokenizer = tok
    with torch.random.fork_rng(devices=[]):
        dm.setup("fit")
    return dm


# --------------------------------------------------------------------------- the two sides
def run_ftlab(model_dir: Path, seed: int, steps: int) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch
    from rl_learning import RewardCurve

    from ftlab.models import Pretrained
    from ftlab.module import FineTuneModule
    from ftlab.objectives import GRPO
    from ftlab.rewards import FunctionReward

    tok = tokenizer(model_dir)
    reward = RecordingReward(target_id(tok))
    objective = GRPO(
        rewards=[FunctionReward(reward, name="token_share")],
        num_generations=SETTINGS["num_generations"],
        max_new_tokens=SETTINGS["max_new_tokens"],
        temperature=SETTINGS["temperature"],
        top_p=SETTINGS["top_p"],
        beta=SETTINGS["beta"],
        epsilon=SETTINGS["epsilon"],
        scale_rewards=True,
        loss_level=SETTINGS["ftlab_loss_level"],
        updates_per_batch=1,
        max_grad_norm=SETTINGS["max_grad_norm"],
        kl_estimator=SETTINGS["ftlab_kl_estimator"],
    )
    pl.seed_everything(seed, verbose=False)
    module = FineTuneModule(
        Pretrained(str(model_dir)),
        c.ftlab_method("lora"),
        objective,
        optimizer=lambda p: torch.optim.AdamW(p, lr=SETTINGS["lr"], weight_decay=0.0),
    )
    clock = c.Clock(1, steps - 1)
    curve = RewardCurve()
    trainer = c.quiet_trainer(c.tempfile_root(), steps, [c.lightning_clock(clock), curve])
    started = time.perf_counter()
    trainer.fit(module, prompt_data(tok))
    wall = time.perf_counter() - started
    group = trainer.optimizers[0].param_groups[0]
    logged = max((abs(a - b) for a, b in zip(curve.rewards, reward.means, strict=True)), default=0.0)
    return {
        "optimizer": {"lr": group["lr"], "weight_decay": group["weight_decay"], "name": type(trainer.optimizers[0])},
        "trainable": sum(p.numel() for p in module.model.parameters() if p.requires_grad),
        "logged_reward_max_diff": logged,
        **_result(reward, clock, wall),
    }


def run_trl(model_dir: Path, seed: int, steps: int) -> dict[str, Any]:
    import contextlib
    import io

    import torch
    import trl_side
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tok = tokenizer(model_dir)
    reward = RecordingReward(target_id(tok))
    dm = prompt_data(tok)
    ids_by_text = {ex.text: list(ex.prompt_ids) for ex in dm.train_set}
    assert len(ids_by_text) == len(dm.train_set), "two prompts render to the same text"

    class FtlabTokensGRPOTrainer(GRPOTrainer):
        """GRPOTrainer given ftlab's prompt token ids (as trl_side.trl_grpo)."""

        def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict]:
            return [ids_by_text[p] for p in prompts], None, {}

    args = trl_side._args(
        GRPOConfig,
        steps,
        SETTINGS["prompts_per_step"] * SETTINGS["num_generations"],  # TRL counts completions, not prompts
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        num_generations=SETTINGS["num_generations"],
        max_completion_length=SETTINGS["max_new_tokens"],
        temperature=SETTINGS["temperature"],
        top_p=SETTINGS["top_p"],
        top_k=0,
        beta=SETTINGS["beta"],
        epsilon=SETTINGS["epsilon"],
        num_iterations=1,
        loss_type=SETTINGS["trl_loss_type"],
        scale_rewards="group",
        use_bias_correction_kl=SETTINGS["trl_use_bias_correction_kl"],
        max_grad_norm=SETTINGS["max_grad_norm"],
        shuffle_dataset=False,
    )
    args.seed = seed  # trl_side._args sets common.SEED; this run's seed and rate replace it before the trainer
    args.learning_rate = SETTINGS["lr"]
    torch.manual_seed(seed)
    clock = c.Clock(1, steps - 1)
    trainer = FtlabTokensGRPOTrainer(
        model=str(model_dir),
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [ex.text for ex in dm.train_set]}),
        processing_class=tok,
        peft_config=c.lora_config(),
        callbacks=[c.trl_clock(clock)],
    )
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # TRL's per-step log lines
        trainer.train()
    wall = time.perf_counter() - started
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    group = optimizer.param_groups[0]
    return {
        "optimizer": {"lr": group["lr"], "weight_decay": group["weight_decay"], "name": type(optimizer)},
        "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "trl_seed": trainer.args.seed,
        "trl_lr_scheduler": str(trainer.args.lr_scheduler_type),
        **_result(reward, clock, wall),
    }


def _result(reward: RecordingReward, clock: c.Clock, wall: float) -> dict[str, Any]:
    import torch

    return {
        "rewards": reward.means,
        "completion_tokens": reward.lengths,
        "prompt_keys": reward.prompt_keys,
        "step_seconds": statistics.median(clock.step_seconds()),
        "cpu_seconds": statistics.median(clock.cpu_seconds()),
        "train_wall": wall,
        "steps_done": len(clock.ends),
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- orchestration
def one(side: str, seed: int, steps: int, root: Path, result: Path) -> None:
    """One (side, seed) run in this process; its result goes to `result` as JSON."""
    import torch

    torch.set_num_threads(1)
    model_dir = start_model(root)
    fn = run_ftlab if side == "ftlab" else run_trl
    out = fn(model_dir, seed, steps)
    out["optimizer"]["name"] = out["optimizer"]["name"].__name__
    out.update(side=side, seed=seed, steps=steps, settings=SETTINGS)
    c.write_json(result, out)


def result_path(root: Path, side: str, seed: int, steps: int) -> Path:
    tag = hashlib.sha1(json.dumps(SETTINGS, sort_keys=True).encode()).hexdigest()[:8]
    return root / "curves" / f"{side}_seed{seed}_steps{steps}_{tag}.json"


def launch(side: str, seed: int, steps: int, root: Path) -> dict[str, Any]:
    path = result_path(root, side, seed, steps)
    if not path.exists():
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", side, "--seeds", str(seed)]
        cmd += ["--steps", str(steps), "--root", str(root)]
        log = path.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with log.open("w") as fh:
            done = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{side} seed {seed} failed (exit {done.returncode}); see {log}")
        result = json.loads(path.read_text())
        result["process_wall"] = time.perf_counter() - started  # start-up, model load and training
        c.write_json(path, result)
        print(f"{side} seed {seed}: {result['process_wall']:.0f} s", flush=True)
    return json.loads(path.read_text())


def spread(values: list[float]) -> float:
    """Half the range across seeds (max - min) / 2."""
    return (max(values) - min(values)) / 2


def fmt(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {spread(values):.3f}"


def pretrain_note(root: Path) -> str:
    """The start model's SFT run, from the summary ftlab wrote for it."""
    summary = root / "pretrain" / "summary.json"
    if not summary.exists():
        return "no summary of the pretrain run found"
    d = json.loads(summary.read_text())
    return (
        f"{d['steps']} steps, train loss {d['train_loss_first']:.2f} -> {d['train_loss']:.2f}, val loss "
        f"{d['val_loss']:.2f}, {d['wall_seconds']:.0f} s of wall time"
    )


def versions() -> str:
    from importlib.metadata import version

    names = ("torch", "lightning", "transformers", "peft", "trl", "ftlab")
    return ", ".join(f"{n} {version(n)}" for n in names) + f"; Python {platform.python_version()}"


def git_head() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, wall: float, model_dir: Path) -> str:
    steps, seeds = args.steps, args.seeds
    s = SETTINGS
    load = os.getloadavg()
    ft, tr = runs["ftlab"], runs["trl"]
    same_prompts = all(a["prompt_keys"] == b["prompt_keys"] for a in ft for b in tr)
    lines = [
        "# GRPO learning curves: ftlab against TRL's GRPOTrainer",
        "",
        f"Written by `python benchmarks/grpo_curves.py --steps {steps} --seeds {' '.join(map(str, seeds))}` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC (code {git_head()}); whole run "
        f"{wall / 60:.1f} min of wall time (runs already on disk are reused). How it is measured: the script's "
        "docstring.",
        "",
        f"Versions: {versions()}. CPU only, one torch thread per process, each (side, seed) its own process, run "
        f"one after another; {os.cpu_count()} cores shared with other jobs (load average now "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}).",
        "",
        "## Setup (shared by both sides)",
        "",
        f"Start model: the quickstart (experiments/quickstart.yaml, tiny Llama trained with full SFT) exported with "
        f"`ftlab export` to `{model_dir.relative_to(REPO) if model_dir.is_relative_to(REPO) else model_dir}`, "
        f"as rl_learning.py does ({pretrain_note(args.root)}); both sides load that folder and its tokenizer. "
        "Prompts: "
        f"ftlab/assets/synthetic_prompts.jsonl, chat template, file order (no shuffling, cycled when exhausted), "
        f"ftlab's prompt token ids on both sides. Reward: `TokenShare({s['target']!r})` through "
        "common.CountingReward; the curve is its mean over each step's completions.",
        "",
        "| setting | ftlab (`GRPO`, `FineTuneModule`) | TRL (`GRPOConfig`, `GRPOTrainer`) |",
        "|---|---|---|",
        f"| prompts per step | `PromptDataModule(batch_size={s['prompts_per_step']})` | "
        f"`per_device_train_batch_size={s['prompts_per_step'] * s['num_generations']}` (completions) |",
        f"| completions per prompt G | `num_generations={s['num_generations']}` | "
        f"`num_generations={s['num_generations']}` |",
        f"| max new tokens | `max_new_tokens={s['max_new_tokens']}` | `max_completion_length={s['max_new_tokens']}` |",
        f"| max prompt tokens | `max_length={s['max_prompt_length']}` (prompt ids given to TRL) | same ids |",
        f"| sampling | `temperature={s['temperature']}`, `top_p={s['top_p']}` | "
        f"`temperature={s['temperature']}`, `top_p={s['top_p']}`, `top_k=0` |",
        f"| KL coefficient | `beta={s['beta']}` (reference = adapters off) | `beta={s['beta']}` (adapters off) |",
        f"| clip | `epsilon={s['epsilon']}` | `epsilon={s['epsilon']}` |",
        f"| loss normalisation | `loss_level={s['ftlab_loss_level']!r}` | `loss_type={s['trl_loss_type']!r}` |",
        f"| KL estimator | `kl_estimator={s['ftlab_kl_estimator']!r}` | "
        f"`use_bias_correction_kl={s['trl_use_bias_correction_kl']}` |",
        "| advantages | `scale_rewards=True` (group std, +1e-4) | `scale_rewards='group'` (group std, +1e-4) |",
        "| updates per rollout batch | `updates_per_batch=1` | `num_iterations=1` |",
        f"| gradient clipping | `max_grad_norm={s['max_grad_norm']}` | `max_grad_norm={s['max_grad_norm']}` |",
        f"| LoRA | `LoRA(r={c.LORA['r']}, alpha={c.LORA['alpha']}, dropout={c.LORA['dropout']}, "
        f"target_modules='all-linear')` | `LoraConfig(r={c.LORA['r']}, lora_alpha={c.LORA['alpha']}, "
        f"lora_dropout={c.LORA['dropout']}, target_modules='all-linear')` |",
        f"| optimizer | `torch.optim.AdamW(lr={s['lr']}, weight_decay=0)`, no scheduler | "
        f"`optim='adamw_torch'`, `learning_rate={s['lr']}`, `weight_decay=0`, `lr_scheduler_type='constant'` |",
        "| seed | `lightning.seed_everything(seed)` | `GRPOConfig(seed=seed)` (+ `torch.manual_seed`) |",
        "| precision, device | float32, CPU | float32, CPU, `gradient_checkpointing=False` |",
        "",
        "Checked from the runs: optimizer lr / weight decay at the end "
        + "; ".join(
            f"{r['side']} seed {r['seed']} {r['optimizer']['name']} {r['optimizer']['lr']:g} / "
            f"{r['optimizer']['weight_decay']:g}"
            for r in ft + tr
        )
        + ". Trainable (LoRA) parameters: "
        + ", ".join(f"{side} {sorted({r['trainable'] for r in runs[side]})}" for side in SIDES)
        + f". Same prompts at every step on both sides, all seeds: {'yes' if same_prompts else 'NO'}. "
        f"ftlab's logged `train/reward` equals the recorded mean reward (largest difference "
        f"{max(r['logged_reward_max_diff'] for r in ft):.1e}).",
        "",
        f"## Mean reward per {WINDOW} steps (mean over seeds {', '.join(map(str, seeds))} ± half the range across "
        "seeds)",
        "",
        "| steps | ftlab | TRL | TRL - ftlab |",
        "|---|---:|---:|---:|",
    ]
    for start in range(0, steps, WINDOW):
        end = min(start + WINDOW, steps)
        per = {side: [statistics.fmean(r["rewards"][start:end]) for r in runs[side]] for side in SIDES}
        diff = statistics.fmean(per["trl"]) - statistics.fmean(per["ftlab"])
        lines.append(f"| {start + 1}-{end} | {fmt(per['ftlab'])} | {fmt(per['trl'])} | {diff:+.3f} |")
    first = {side: [statistics.fmean(r["rewards"][:WINDOW]) for r in runs[side]] for side in SIDES}
    last = {side: [statistics.fmean(r["rewards"][-WINDOW:]) for r in runs[side]] for side in SIDES}
    lines += [
        "",
        f"## Per seed: first {WINDOW} and last {WINDOW} steps",
        "",
        f"| side | seed | first {WINDOW} | last {WINDOW} | gain | mean completion tokens, first {WINDOW} -> last "
        f"{WINDOW} |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for side in SIDES:
        for r in runs[side]:
            f0, l0 = statistics.fmean(r["rewards"][:WINDOW]), statistics.fmean(r["rewards"][-WINDOW:])
            n0 = statistics.fmean(r["completion_tokens"][:WINDOW])
            n1 = statistics.fmean(r["completion_tokens"][-WINDOW:])
            lines.append(f"| {side} | {r['seed']} | {f0:.3f} | {l0:.3f} | {l0 - f0:+.3f} | {n0:.1f} -> {n1:.1f} |")
    lines += [
        "",
        "## Time per step (this run; indicative only, the machine was shared with other jobs)",
        "",
        "Median over each run's steps after the first (step end to step end: sampling, reward, reference and "
        "policy passes, backward, optimizer); CPU s/step is the process's CPU time over the same intervals.",
        "",
        "| side | wall s/step per seed | wall s/step (median of seeds) | CPU s/step (median of seeds) | "
        "training wall per run (s) | process wall per run (s) |",
        "|---|---|---:|---:|---|---|",
    ]
    sec = {}
    for side in SIDES:
        per_seed = [r["step_seconds"] for r in runs[side]]
        sec[side] = statistics.median(per_seed)
        cpu = statistics.median(r["cpu_seconds"] for r in runs[side])
        walls = ", ".join(f"{r['train_wall']:.0f}" for r in runs[side])
        walls += " | " + ", ".join(f"{r['process_wall']:.0f}" if "process_wall" in r else "-" for r in runs[side])
        lines.append(f"| {side} | {', '.join(f'{v:.3f}' for v in per_seed)} | {sec[side]:.3f} | {cpu:.3f} | {walls} |")
    lines += ["", "## Reading", "", reading(runs, first, last, sec), ""]
    return "\n".join(lines)


def overlaps(a: list[float], b: list[float]) -> bool:
    """Whether the ranges (min to max across seeds) of two sides' values overlap."""
    return max(a) >= min(b) and max(b) >= min(a)


def rise_step(rewards: list[float], threshold: float) -> int:
    """The first step whose trailing 10-step mean reaches `threshold` (len + 1 if none)."""
    for end in range(WINDOW, len(rewards) + 1):
        if statistics.fmean(rewards[end - WINDOW : end]) >= threshold:
            return end
    return len(rewards) + 1


def reading(
    runs: dict[str, list[dict[str, Any]]],
    first: dict[str, list[float]],
    last: dict[str, list[float]],
    sec: dict[str, float],
) -> str:
    """One paragraph, decided from the numbers: per-window overlap of the seed ranges, how fast each side rises,
    where it levels off, and the time per step."""
    steps = len(runs["ftlab"][0]["rewards"])
    n = len(runs["ftlab"])
    apart, ft_above, windows = [], 0, 0
    for start in range(0, steps, WINDOW):
        end = min(start + WINDOW, steps)
        per = {side: [statistics.fmean(r["rewards"][start:end]) for r in runs[side]] for side in SIDES}
        windows += 1
        ft_above += statistics.fmean(per["ftlab"]) > statistics.fmean(per["trl"])
        if not overlaps(per["ftlab"], per["trl"]):
            higher = max(SIDES, key=lambda side: statistics.fmean(per[side]))
            apart.append(f"{start + 1}-{end} ({higher} higher)")
    if apart:
        match = (
            f"the two sides' seed ranges overlap in {windows - len(apart)} of {windows} windows, not in "
            + ", ".join(apart)
        )
    else:
        match = f"the two sides' seed ranges overlap in all {windows} windows: the curves match within the seed spread"
    tail = 3 * WINDOW
    plateau = {side: [statistics.fmean(r["rewards"][-tail:]) for r in runs[side]] for side in SIDES}
    level = (
        f"over the last {tail} steps the per-seed means are ftlab "
        + ", ".join(f"{v:.3f}" for v in plateau["ftlab"])
        + " and TRL "
        + ", ".join(f"{v:.3f}" for v in plateau["trl"])
    )
    if overlaps(plateau["ftlab"], plateau["trl"]):
        level += " (ranges overlap, so the level reached is not distinguishable with these seeds)"
    else:
        high = max(SIDES, key=lambda side: statistics.fmean(plateau[side]))
        level += f" ({high} is higher in every seed, a difference these seeds do resolve)"
    threshold = statistics.fmean(plateau["ftlab"] + plateau["trl"]) / 2
    rise = {side: [rise_step(r["rewards"], threshold) for r in runs[side]] for side in SIDES}
    pace = (
        f"to reach half the final level ({threshold:.3f}, trailing {WINDOW}-step mean) ftlab's seeds take "
        + ", ".join(map(str, rise["ftlab"]))
        + " steps and TRL's "
        + ", ".join(map(str, rise["trl"]))
    )
    if overlaps([float(v) for v in rise["ftlab"]], [float(v) for v in rise["trl"]]):
        pace += ", overlapping ranges: neither learns measurably faster"
    else:
        quick = min(SIDES, key=lambda side: statistics.fmean(rise[side]))
        pace += f": {quick} rises faster in every seed"
    learns = {side: all(lt > ft for ft, lt in zip(first[side], last[side], strict=True)) for side in SIDES}
    learned = " and ".join(f"{'every' if learns[side] else 'not every'} {side} seed" for side in SIDES)
    return (
        f"Over {steps} steps with {n} seeds per side, {match}; ftlab's mean is above TRL's in {ft_above} of "
        f"{windows} windows. The reward rises from the first to the last {WINDOW} steps for {learned}; {pace}; "
        f"{level}. With {n} seeds a side the seed range is a rough yardstick, so a single window outside it is weak "
        "evidence; and the two implementations draw different random samples from the same distribution "
        "(different sampling code; the same seed need not give the same LoRA initialisation), so the curves "
        "can match only in distribution, not sample by sample. Per step, TRL took "
        f"{sec['trl'] / sec['ftlab']:.2f}x ftlab's wall time here (a shared machine: indicative only)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "bench" / "grpo_curves")
    parser.add_argument("--out", type=Path, default=HERE / "GRPO_CURVES.md")
    parser.add_argument("--one", choices=SIDES, help=argparse.SUPPRESS)  # internal: one run in this process
    args = parser.parse_args()
    args.root = args.root.resolve()
    args.out = args.out.resolve()
    os.chdir(REPO)  # the quickstart config names its data relative to the repository
    if args.one:
        one(args.one, args.seeds[0], args.steps, args.root, result_path(args.root, args.one, args.seeds[0], args.steps))
        return
    if args.steps < 2 * WINDOW:
        raise SystemExit(f"--steps must be at least {2 * WINDOW}")
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    model_dir = start_model(args.root)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for seed in args.seeds:
        for side in SIDES:
            runs[side].append(launch(side, seed, args.steps, args.root))
    text = report(runs, args, time.perf_counter() - started, model_dir)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
