"""GRPO in ftlab against TRL's GRPOTrainer: seconds per optimizer step, and the share of it spent generating.

    python benchmarks/grpo.py            # every measurement, each in a fresh process; writes benchmarks/GRPO.md
    python benchmarks/grpo.py --quick    # a short smoke run of every measurement; prints, writes nothing
    python benchmarks/grpo.py --child speed ftlab_grpo   # one measurement, printed as a RESULT json line

Setup shared by both sides: a Llama-shaped model built from config (`BACKBONE`, seed 0, float32, sdpa
attention) with ftlab's offline BPE tokenizer (vocab 2048) and its chat template, saved once with
`save_pretrained` (`TinyBackbone.model_dir`) and loaded from that folder by both; LoRA r=8, alpha 16, no
dropout, on every linear layer but the output head (TRL through `peft_config`); AdamW (`torch.optim.AdamW`,
lr 5e-4, weight decay 0, constant rate), gradient-norm clipping at 1.0; 8 prompts per optimizer step, G = 4
completions each (32 sequences), at most 32 new tokens, sampling at temperature 1.0, top-p 1.0, no top-k,
both stopping at EOS (and masking after it); beta 0.04 with the reference computed every step by switching
the adapters off; one update per rollout batch (mu = 1, so neither side runs an extra pass for the sampling
policy's log-probs); rewards and advantages per group, scaled by the group's std; token-level loss (TRL's
`loss_type="dapo"`, which on one process without accumulation is ftlab's `loss_level="token"`); TRL's
importance-sampling correction of the KL term off (`use_bias_correction_kl=False`), as ftlab has none.
Reward: `ftlab.rewards.TokenShare` of the token " the", the same callable on both sides (TRL calls reward
functions as `fn(prompts=, completions=, completion_ids=, **columns)`, as ftlab does).
Prompts: `ftlab/assets/synthetic_prompts.jsonl` rendered with the chat template and tokenized by ftlab's
`PromptDataModule` (BOS first), read in file order without shuffling on both sides (TRL:
`shuffle_dataset=False`), so step k samples from the same 8 prompts everywhere. TRL is given ftlab's token
ids (a subclass maps each rendered prompt to them): its own tokenization of the rendered text would drop
the BOS token. The probe checks that both sides pass the same prompt token ids to `generate` at every step.

What is measured (`--child speed NAME`): seconds per optimizer step, from one step's end hook to the next
(ftlab: Lightning `on_train_batch_end`; TRL: `TrainerCallback.on_step_end`), so the whole loop is counted
(data, sampling, rewards, reference pass, policy pass, backward, AdamW, logging); the median over the steps
after `--warmup` warm-up steps. The phases of a step are timed the same way on both sides by wrapping, in
the measuring process only, the shared library calls: `GenerationMixin.generate` (HF generation; its share
of the step is the "generation share"), the completion log-prob pass (ftlab's `completion_logps`, TRL's
`_get_per_token_logps_and_entropies`; without gradient: the reference pass, with gradient: the policy
pass), `torch.Tensor.backward`, and the optimizer step (global optimizer step hooks). ftlab's own
`train/perf/generation_share` (its `sample` call, generate plus masking and decoding, over the step) is
reported beside it. Tokens generated per step: the completion tokens the reward sees (up to and including
EOS), and the decode positions `generate` computed (sequences x new tokens, as a batch runs until its
longest completion ends); per-token times divide by the decode positions. Contenders alternate over
`--rounds` rounds (the machine is shared and noisy); the table gives the median over rounds of each
round's median. Each measurement runs in its own process with `--threads` torch threads.

Contenders: `ftlab_grpo` (ftlab as it is), `trl_grpo` (TRL with `gradient_checkpointing=False`, like
ftlab), `trl_grpo_gradient_checkpointing` (TRL's default, one extra run), and `ftlab_grpo_proposed`: ftlab's
GRPO with its sampling function swapped in its measuring process only (ftlab is not changed), to measure a
change not yet in ftlab: `proposed_sample` prefills each prompt once before `generate` and samples with the
LoRA update merged into the weights. For that contender the prefill counts as generation. (ftlab's log-prob
passes already run each prompt once per group of G samples, with its KV cache repeated G times, and the
output head only where a completion token is predicted.)

Where the time goes (`--child profile NAME`): after the warm-up, `--profile-steps` steps under
torch.profiler (self CPU time of the busiest ops; ATen op time over wall time shows how much of a step is
Python), then as many under cProfile (the Python functions with the most own time).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROMPTS = REPO / "ftlab" / "assets" / "synthetic_prompts.jsonl"
BACKBONE: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
VOCAB = 2048
SEED = 0
PROMPTS_PER_STEP = 8
NUM_GENERATIONS = 4
MAX_NEW_TOKENS = 32
MAX_PROMPT_LENGTH = 64
TEMPERATURE = 1.0
TOP_P = 1.0
BETA = 0.04
EPSILON = 0.2
LR = 5e-4
MAX_GRAD_NORM = 1.0
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.0}
TARGET = " the"
SPEED = ("ftlab_grpo", "trl_grpo", "ftlab_grpo_proposed")
PROFILED = ("ftlab_grpo", "trl_grpo")
EXTRA_SPEED = ("trl_grpo_gradient_checkpointing",)
PHASES = ("generate", "reference", "policy_forward", "backward", "optimizer")
TOP_OPS = 12
TOP_FUNCTIONS = 14


# --------------------------------------------------------------------------- shared setup
def model_folder() -> Path:
    """The saved model folder both sides load (built once, cached by ftlab)."""
    from transformers import AutoModelForCausalLM

    from ftlab.models import TinyBackbone

    return TinyBackbone(config=BACKBONE, vocab_size=VOCAB, seed=SEED).model_dir(AutoModelForCausalLM)


def prompt_datamodule(folder: Path) -> Any:
    """ftlab's prompt data from the bundled file, chat template on, read in file order (no shuffling)."""
    from torch.utils.data import DataLoader

    from ftlab.data import PromptDataModule
    from ftlab.models.tokenizers import load_tokenizer

    class OrderedPrompts(PromptDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, collate_fn=self.collate)

    dm = OrderedPrompts(train=str(PROMPTS), batch_size=PROMPTS_PER_STEP, max_length=MAX_PROMPT_LENGTH, seed=SEED)
    dm.tokenizer = load_tokenizer(str(folder))
    dm.setup("fit")
    return dm


def target_token(folder: Path) -> int:
    from ftlab.models.tokenizers import load_tokenizer

    ids = load_tokenizer(str(folder))(TARGET, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise SystemExit(f"{TARGET!r} is not one token for this tokenizer: {ids}")
    return ids[0]


class Probe:
    """Per-step wall time of the phases both sides share, and what `generate` was given and produced.

    Installed in the measuring process only: it wraps `GenerationMixin.generate`, `torch.Tensor.backward`
    and the optimizer step (global hooks); the log-prob pass is reported by each side's wrapper (`timed`)."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.prompt_hashes: list[str] = []
        self.generated: list[dict[str, int]] = []
        self.completion_tokens: list[int] = []
        self._opt_t0 = 0.0
        self._active: set[str] = set()

    @contextlib.contextmanager
    def timed(self, phase: str) -> Any:
        if phase in self._active:  # nested in a call already timed as this phase
            yield
            return
        self._active.add(phase)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.current[phase] += time.perf_counter() - t0
            self._active.discard(phase)

    def install(self) -> None:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
        from transformers.generation.utils import GenerationMixin

        probe = self
        generate = GenerationMixin.generate

        def timed_generate(model: Any, *args: Any, **kwargs: Any) -> Any:
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            config = kwargs.get("generation_config")
            copies = getattr(config, "num_return_sequences", None) or 1
            with probe.timed("generate"):
                out = generate(model, *args, **kwargs)
            rows = [tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask, strict=True) for _ in range(copies)]
            probe.prompt_hashes.append(hashlib.sha256(repr(rows).encode()).hexdigest()[:12])
            new = out.shape[1] - ids.shape[1]
            probe.generated.append(
                {"sequences": out.shape[0], "new_tokens": new, "prompt_tokens": int(mask.sum()) * copies}
            )
            return out

        GenerationMixin.generate = timed_generate  # type: ignore[method-assign]
        backward = torch.Tensor.backward

        def timed_backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            with probe.timed("backward"):
                backward(tensor, *args, **kwargs)

        torch.Tensor.backward = timed_backward  # type: ignore[method-assign]

        def pre(*_: Any) -> None:
            probe._opt_t0 = time.perf_counter()

        def post(*_: Any) -> None:
            probe.current["optimizer"] += time.perf_counter() - probe._opt_t0

        register_optimizer_step_pre_hook(pre)
        register_optimizer_step_post_hook(post)

    def logps_phase(self) -> str:
        import torch

        return "policy_forward" if torch.is_grad_enabled() else "reference"

    def end_step(self, seconds: float) -> None:
        phases = {p: self.current.get(p, 0.0) for p in PHASES}
        self.steps.append({**phases, "other": seconds - sum(phases.values()), "step": seconds})
        self.current = defaultdict(float)


def counting_reward(token_id: int, probe: Probe) -> Any:
    """`TokenShare(token_id)`, also counting the completion tokens it is shown (one call per step)."""
    from ftlab.rewards import TokenShare

    class CountingTokenShare(TokenShare):
        def __call__(
            self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **columns: Any
        ) -> list[float]:
            probe.completion_tokens.append(sum(len(ids) for ids in completion_ids))
            return super().__call__(prompts, completions, completion_ids, **columns)

    return CountingTokenShare(token_id=token_id)


class StepProfiler:
    """After `after` steps: torch.profiler over `n` steps, then cProfile over the next `n` (`n` = 0: never)."""

    def __init__(self, after: int, n: int) -> None:
        self.after, self.n = after, n
        self.prof: Any = None
        self.cprof: cProfile.Profile | None = None
        self.result: dict[str, Any] = {}

    def step_done(self, done: int) -> None:
        from torch.profiler import ProfilerActivity, profile

        if not self.n:
            return
        if done == self.after:
            self.prof = profile(activities=[ProfilerActivity.CPU])
            self.prof.start()
            self.t0 = time.perf_counter()
        elif done == self.after + self.n and self.prof is not None:
            self.prof.stop()
            wall = (time.perf_counter() - self.t0) / self.n
            events = [e for e in self.prof.key_averages() if not e.key.startswith("ProfilerStep")]
            ops = [e for e in events if e.key.startswith("aten::")]
            ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
            self.result["torch"] = {
                "wall_ms_per_step": 1000 * wall,
                "aten_ms_per_step": sum(e.self_cpu_time_total for e in ops) / 1000 / self.n,
                "top": [
                    {"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000 / self.n, "calls": e.count / self.n}
                    for e in ops[:TOP_OPS]
                ],
            }
            self.prof = None
            self.cprof = cProfile.Profile()
            self.cprof.enable()
            self.t0 = time.perf_counter()
        elif done == self.after + 2 * self.n and self.cprof is not None:
            self.cprof.disable()
            wall = (time.perf_counter() - self.t0) / self.n
            stats = pstats.Stats(self.cprof, stream=io.StringIO())
            rows = []
            for (file, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
                where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
                rows.append((tottime, cumtime, ncalls, f"{func} ({where})"))
            rows.sort(reverse=True)
            self.result["cprofile"] = {
                "wall_ms_per_step": 1000 * wall,
                "top": [
                    {
                        "function": name,
                        "own_ms": 1000 * own / self.n,
                        "cum_ms": 1000 * cum / self.n,
                        "calls": n / self.n,
                    }
                    for own, cum, n, name in rows[:TOP_FUNCTIONS]
                ],
            }
            self.cprof = None


def summary(name: str, probe: Probe, warmup: int, cycle: list[float], extra: dict[str, Any]) -> dict[str, Any]:
    import torch

    timed = probe.steps[warmup:]
    phases = {p: statistics.median(s[p] for s in timed) for p in (*PHASES, "other")}
    inner = statistics.median(s["step"] for s in timed)
    gen = probe.generated[warmup : warmup + len(timed)]
    return {
        "contender": name,
        "step_seconds": statistics.median(cycle[warmup - 1 :]) if warmup >= 1 else statistics.median(cycle),
        "inner_seconds": inner,
        "phases": phases,
        "generation_share": statistics.median(s["generate"] / s["step"] for s in timed),
        "completion_tokens": statistics.median(probe.completion_tokens[warmup : warmup + len(timed)]),
        "decode_positions": statistics.median(g["sequences"] * g["new_tokens"] for g in gen),
        "new_tokens": statistics.median(g["new_tokens"] for g in gen),
        "sequences": gen[0]["sequences"],
        "prompt_tokens": statistics.median(g["prompt_tokens"] for g in gen),
        "prompt_hashes": probe.prompt_hashes,
        "steps_timed": len(timed),
        "torch_threads": torch.get_num_threads(),
        **extra,
    }


# --------------------------------------------------------------------------- the measured proposal
def proposed_sample(
    model: Any,
    tokenizer: Any,
    batch: Any,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
) -> Any:
    """`ftlab.objectives.rollouts.sample` (same sampling, same masking after EOS, same Rollout), but the
    prompt is prefilled once per prompt, not once per sample (its KV cache repeated G times before `generate`
    continues from it), and the LoRA update is merged into the weights while sampling (no adapter branch per
    linear layer and decode step). A proposal measured here; ftlab itself is not changed."""
    import torch
    from peft import PeftModel
    from transformers import GenerationConfig

    from ftlab.objectives.rollouts import Rollout

    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        max_new_tokens=max_new_tokens,
        num_return_sequences=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    ids, prompt_mask = batch.input_ids, batch.attention_mask
    merged = isinstance(model, PeftModel)
    was_training = model.training
    model.eval()
    try:
        if merged:
            model.merge_adapter()
        with torch.no_grad():
            positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
            prefill = model(
                input_ids=ids[:, :-1],
                attention_mask=prompt_mask[:, :-1],
                position_ids=positions[:, :-1],
                use_cache=True,
                logits_to_keep=1,
            )
            cache = prefill.past_key_values
            cache.batch_repeat_interleave(num_samples)
            out = model.generate(
                input_ids=ids.repeat_interleave(num_samples, dim=0),
                attention_mask=prompt_mask.repeat_interleave(num_samples, dim=0),
                past_key_values=cache,
                generation_config=config,
            )
    finally:
        if merged:
            model.unmerge_adapter()
        model.train(was_training)
    # from here on, as ftlab's `sample`
    prompt_length = ids.shape[1]
    completions = out[:, prompt_length:]
    eos = completions == tokenizer.eos_token_id
    width = completions.shape[1]
    first_eos = torch.where(eos.any(1), eos.float().argmax(1), torch.full_like(eos[:, 0], width, dtype=torch.long))
    mask = (torch.arange(width, device=out.device)[None, :] <= first_eos[:, None]).long()
    completions = torch.where(mask.bool(), completions, torch.full_like(completions, tokenizer.pad_token_id))
    kept = [row[m.bool()].tolist() for row, m in zip(completions, mask, strict=True)]
    return Rollout(
        sequences=torch.cat([ids.repeat_interleave(num_samples, dim=0), completions], dim=1),
        attention_mask=torch.cat([prompt_mask.repeat_interleave(num_samples, dim=0), mask], dim=1),
        completion_mask=mask.float(),
        prompt_length=prompt_length,
        prompts=[p for p in batch.prompts for _ in range(num_samples)],
        completions=tokenizer.batch_decode(kept, skip_special_tokens=True),
        completion_ids=kept,
        columns={k: [v for v in values for _ in range(num_samples)] for k, values in batch.columns.items()},
        group=num_samples,
    )


# --------------------------------------------------------------------------- ftlab
def measure_ftlab(name: str, warmup: int, steps: int, root: Path, profile_steps: int = 0) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch

    import ftlab.objectives.grpo as grpo_module
    from ftlab.methods import LoRA
    from ftlab.models import Pretrained
    from ftlab.module import FineTuneModule
    from ftlab.objectives import GRPO
    from ftlab.rewards import FunctionReward

    folder = model_folder()
    dm = prompt_datamodule(folder)
    probe = Probe()
    probe.install()
    if name == "ftlab_grpo_proposed":

        def timed_sample(*args: Any, **kwargs: Any) -> Any:
            with probe.timed("generate"):  # the prompt prefill, done outside `generate`, counts as generation
                return proposed_sample(*args, **kwargs)

        grpo_module.sample = timed_sample
    logps = grpo_module.completion_logps

    def timed_logps(*args: Any, **kwargs: Any) -> Any:
        with probe.timed(probe.logps_phase()):
            return logps(*args, **kwargs)

    grpo_module.completion_logps = timed_logps  # the name GRPO calls, in this process only
    n_profile = profile_steps
    profiler = StepProfiler(warmup, n_profile)

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.cycle: list[float] = []
            self.last_end: float | None = None
            self.shares: list[float] = []

        def on_train_batch_start(self, *args: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            now = time.perf_counter()
            probe.end_step(now - self.t0)
            if self.last_end is not None:
                self.cycle.append(now - self.last_end)
            self.last_end = now
            self.shares.append(float(trainer.callback_metrics["train/perf/generation_share"]))
            profiler.step_done(len(probe.steps))

    objective = GRPO(
        rewards=[FunctionReward(counting_reward(target_token(folder), probe))],
        num_generations=NUM_GENERATIONS,
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        beta=BETA,
        epsilon=EPSILON,
        scale_rewards=True,
        loss_level="token",
        updates_per_batch=1,
        max_grad_norm=MAX_GRAD_NORM,
    )
    pl.seed_everything(SEED, verbose=False)
    module = FineTuneModule(
        Pretrained(str(folder)),
        LoRA(r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], target_modules="all-linear"),
        objective,
        optimizer=lambda p: torch.optim.AdamW(p, lr=LR, weight_decay=0.0),
    )
    timer = StepTimer()
    total = warmup + max(steps, 2 * n_profile)
    trainer = pl.Trainer(
        default_root_dir=root,
        max_steps=total,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(module, dm)
    extra = {"ftlab_generation_share": statistics.median(timer.shares[warmup:]), "profile": profiler.result}
    return summary(name, probe, warmup, timer.cycle, extra)


# --------------------------------------------------------------------------- TRL
def measure_trl(name: str, warmup: int, steps: int, root: Path, profile_steps: int = 0) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ftlab.models.tokenizers import load_tokenizer

    folder = model_folder()
    examples = prompt_datamodule(folder).train_set
    ids_by_text = {ex.text: list(ex.prompt_ids) for ex in examples}
    assert len(ids_by_text) == len(examples), "two prompts render to the same text"
    probe = Probe()
    probe.install()
    profiler = StepProfiler(warmup, profile_steps)

    class FtlabTokensGRPOTrainer(GRPOTrainer):
        """GRPOTrainer given ftlab's prompt token ids; its log-prob pass timed by the probe."""

        def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict]:
            return [ids_by_text[p] for p in prompts], None, {}

        def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
            with probe.timed(probe.logps_phase()):
                return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.cycle: list[float] = []
            self.last_end: float | None = None

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            probe.end_step(now - self.t0)
            if self.last_end is not None:
                self.cycle.append(now - self.last_end)
            self.last_end = now
            profiler.step_done(len(probe.steps))

    args = GRPOConfig(
        output_dir=str(root),
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        per_device_train_batch_size=PROMPTS_PER_STEP * NUM_GENERATIONS,  # TRL counts completions, not prompts
        gradient_accumulation_steps=1,
        num_generations=NUM_GENERATIONS,
        max_completion_length=MAX_NEW_TOKENS,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        top_k=0,
        beta=BETA,
        epsilon=EPSILON,
        num_iterations=1,
        loss_type="dapo",
        scale_rewards="group",
        use_bias_correction_kl=False,
        max_steps=warmup + max(steps, 2 * profile_steps),
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=MAX_GRAD_NORM,
        gradient_checkpointing=name == "trl_grpo_gradient_checkpointing",
        bf16=False,
        fp16=False,
        use_cpu=True,
        report_to="none",
        eval_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        dataloader_num_workers=0,
        shuffle_dataset=False,
        seed=SEED,
    )
    timer = StepTimer()
    trainer = FtlabTokensGRPOTrainer(
        model=str(folder),
        reward_funcs=counting_reward(target_token(folder), probe),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [ex.text for ex in examples]}),
        processing_class=load_tokenizer(str(folder)),
        peft_config=LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
        callbacks=[timer],
    )
    with contextlib.redirect_stdout(io.StringIO()):  # TRL's per-step log lines
        trainer.train()
    return summary(name, probe, warmup, timer.cycle, {"profile": profiler.result})


# --------------------------------------------------------------------------- orchestration
def child(kind: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    import logging

    import torch

    for logger in ("ftlab", "lightning", "lightning.pytorch", "transformers", "trl", "peft"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    n_profile = args.profile_steps if kind == "profile" else 0
    steps = 0 if kind == "profile" else args.steps
    measure = measure_trl if name.startswith("trl") else measure_ftlab
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
        result = measure(name, args.warmup, steps, Path(tmp), n_profile)
    return result | {"load_average_1min": [load, os.getloadavg()[0]]}


def spawn(kind: str, name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", kind, name, "--warmup", str(args.warmup), "--steps", str(args.steps)]
    cmd += ["--threads", str(args.threads), "--profile-steps", str(args.profile_steps)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        print(f"{kind} {name}: failed\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    result = json.loads(line[len("RESULT ") :])
    result["process_seconds"] = time.perf_counter() - t0
    brief = {k: v for k, v in result.items() if k not in ("prompt_hashes", "profile")}
    print(f"{kind} {name}: {json.dumps(brief)}", flush=True)
    return result


def speed_section(rounds: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, dict[str, float]]]:
    med: dict[str, dict[str, float]] = {}
    lines = [
        "| contender | s/step (median over rounds) | per-round medians | generation share (HF `generate`) | "
        "ftlab's logged generation_share | completion tokens/step | decode positions/step | "
        "ms per 1k decode positions | prompt tokens/step |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rs in rounds.items():
        if not rs:
            continue
        m = {
            key: statistics.median(r[key] for r in rs)
            for key in ("step_seconds", "generation_share", "completion_tokens", "decode_positions", "prompt_tokens")
        }
        m["phases"] = {p: statistics.median(r["phases"][p] for r in rs) for p in (*PHASES, "other")}  # type: ignore[assignment]
        m["inner_seconds"] = statistics.median(r["inner_seconds"] for r in rs)
        med[name] = m
        own = [r["ftlab_generation_share"] for r in rs if "ftlab_generation_share" in r]
        per_round = ", ".join(f"{r['step_seconds']:.3f}" for r in rs)
        own_share = f"{statistics.median(own):.2f}" if own else "-"
        lines.append(
            f"| {name} | {m['step_seconds']:.3f} | {per_round} | "
            f"{m['generation_share']:.2f} | {own_share} | "
            f"{m['completion_tokens']:.0f} | {m['decode_positions']:.0f} | "
            f"{1e6 * m['step_seconds'] / m['decode_positions']:.1f} | {m['prompt_tokens']:.0f} |"
        )
    return "\n".join(lines), med


def phase_section(med: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| contender | step (hooks) | " + " | ".join(PHASES) + " | other |",
        "|---|---:|" + "---:|" * (len(PHASES) + 1),
    ]
    for name, m in med.items():
        ph, step = m["phases"], m["inner_seconds"]
        cells = " | ".join(f"{1000 * ph[p]:.0f} ({100 * ph[p] / step:.0f}%)" for p in (*PHASES, "other"))
        lines.append(f"| {name} | {1000 * step:.0f} | {cells} |")
    return "\n".join(lines)


def profile_section(profiles: dict[str, dict[str, Any]]) -> str:
    blocks = []
    for name, r in profiles.items():
        p = r.get("profile", {})
        if "torch" in p:
            t = p["torch"]
            lines = [
                f"**{name}**, torch.profiler: wall {t['wall_ms_per_step']:.0f} ms/step, ATen ops (self time) "
                f"{t['aten_ms_per_step']:.0f} ms/step ({100 * t['aten_ms_per_step'] / t['wall_ms_per_step']:.0f}%); "
                "the rest is Python and dispatch.\n",
                "| op | self ms/step | calls/step |",
                "|---|---:|---:|",
            ]
            lines += [f"| `{o['op']}` | {o['self_ms_per_step']:.1f} | {o['calls']:.0f} |" for o in t["top"]]
            blocks.append("\n".join(lines))
        if "cprofile" in p:
            c = p["cprofile"]
            lines = [
                f"**{name}**, cProfile: wall {c['wall_ms_per_step']:.0f} ms/step (cProfile slows Python); functions "
                "with the most own time.\n",
                "| function | own ms/step | cumulative ms/step | calls/step |",
                "|---|---:|---:|---:|",
            ]
            lines += [
                f"| `{f['function']}` | {f['own_ms']:.1f} | {f['cum_ms']:.1f} | {f['calls']:.0f} |" for f in c["top"]
            ]
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def same_prompts(rounds: dict[str, list[dict[str, Any]]]) -> str:
    runs = [r for rs in rounds.values() for r in rs]
    if len(runs) < 2:
        return "not checked (fewer than two runs)"
    n = min(len(r["prompt_hashes"]) for r in runs)
    same = all(r["prompt_hashes"][:n] == runs[0]["prompt_hashes"][:n] for r in runs)
    return f"{'yes' if same else 'NO'} (all {len(runs)} runs, first {n} steps compared)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run; prints, writes nothing")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "NAME"), help="run one measurement (internal)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps not timed")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both contenders")
    parser.add_argument("--profile-steps", type=int, default=2, help="steps under each profiler per side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per measurement process")
    parser.add_argument("--out", type=Path, default=HERE / "GRPO.md")
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(*args.child, args)))
        return
    if args.quick:
        args.warmup, args.steps, args.rounds, args.profile_steps = 1, 2, 1, 1
    start = time.perf_counter()
    model_folder()  # build the saved model once, before any child runs
    rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in SPEED + EXTRA_SPEED}
    for i in range(args.rounds):
        for name in SPEED if i % 2 == 0 else SPEED[::-1]:
            if (r := spawn("speed", name, args)) is not None:
                rounds[name].append(r)
    for name in EXTRA_SPEED:
        if (r := spawn("speed", name, args)) is not None:
            rounds[name].append(r)
    profiles = {n: r for n in PROFILED if (r := spawn("profile", n, args)) is not None}
    write_report(args, rounds, profiles, time.perf_counter() - start)


def write_report(
    args: argparse.Namespace, rounds: dict[str, list[dict[str, Any]]], profiles: dict[str, Any], seconds: float
) -> None:
    table, med = speed_section(rounds)
    ftlab, trl = med.get("ftlab_grpo"), med.get("trl_grpo")
    ratio = trl["step_seconds"] / ftlab["step_seconds"] if ftlab and trl else float("nan")
    proposed = med.get("ftlab_grpo_proposed")
    proposed_ratio = trl["step_seconds"] / proposed["step_seconds"] if proposed and trl else float("nan")
    per_token = (
        (trl["step_seconds"] / trl["decode_positions"]) / (ftlab["step_seconds"] / ftlab["decode_positions"])
        if ftlab and trl
        else float("nan")
    )
    threads = next((rs[0]["torch_threads"] for rs in rounds.values() if rs), "?")
    text = (
        "# GRPO benchmark: ftlab against TRL's GRPOTrainer\n\n"
        f"Written by `python benchmarks/grpo.py` ({time.strftime('%Y-%m-%d')}, {seconds:.0f} s). "
        "How each number is measured: the docstring of benchmarks/grpo.py.\n\n"
        f"Configuration: Llama-shaped backbone built from config {BACKBONE}, vocab {VOCAB} (ftlab's offline BPE "
        f"and chat template), seed {SEED}, float32, sdpa attention, one `save_pretrained` folder loaded by both; "
        f"LoRA r={LORA['r']}, alpha={LORA['alpha']:g}, dropout 0, all linear layers but the head; AdamW lr {LR:g}, "
        f"weight decay 0, constant rate, gradient clipping {MAX_GRAD_NORM}; {PROMPTS_PER_STEP} prompts x G = "
        f"{NUM_GENERATIONS} per step, at most {MAX_NEW_TOKENS} new tokens, temperature {TEMPERATURE}, top-p {TOP_P}, "
        f"no top-k, stop at EOS on both sides; beta {BETA} (reference = adapters off), epsilon {EPSILON}, mu = 1, "
        f"token-level loss; reward `TokenShare({TARGET!r})`; prompts from {PROMPTS.relative_to(REPO)} in file "
        f"order with ftlab's token ids on both sides. CPU, {threads} torch thread(s), a machine shared with other "
        f"jobs. torch {version('torch')}, lightning {version('lightning')}, transformers "
        f"{version('transformers')}, peft {version('peft')}, trl {version('trl')}.\n\n"
        f"## TRL / ftlab = {ratio:.2f} per step, {per_token:.2f} per decode position (goal >= 1.5)\n\n"
        f"TRL / ftlab_grpo_proposed = {proposed_ratio:.2f} per step. ftlab_grpo_proposed is ftlab's GRPO with the "
        "sampling this benchmark proposes, swapped in at run time (ftlab itself unchanged): each prompt is prefilled "
        "once per group and sampling runs with the LoRA update merged (`proposed_sample`).\n\n"
        f"{args.warmup} warm-up steps, then {args.steps} timed steps per run; {args.rounds} rounds, alternating. "
        "s/step: step-end hook to step-end hook (the whole loop). Generation share: time inside HF `generate` "
        "over the step (step hooks). Completion tokens: what the reward sees (up to and including EOS); decode "
        "positions: sequences x new tokens `generate` ran (a batch runs until its longest completion ends). "
        f"Same prompt token ids at every step on both sides: {same_prompts(rounds)}.\n\n"
        f"{table}\n\n"
        "## Where a step's time goes (ms; each phase's median over timed steps, then over rounds)\n\n"
        "reference: the log-prob pass with the adapters off, without gradient; policy_forward: the log-prob pass "
        "with gradient; other: rewards, advantages, loss arithmetic, gradient clipping, the loop and logging.\n\n"
        f"{phase_section(med)}\n\n"
        "## Profiles\n\n"
        f"One more run per side, {args.profile_steps} steps under torch.profiler then {args.profile_steps} under "
        "cProfile, after the warm-up.\n\n"
        f"{profile_section(profiles)}\n"
    )
    print(text)
    if not args.quick:
        args.out.write_text(text)


def version(pkg: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
