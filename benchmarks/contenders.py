"""The non-TRL sides of the benchmarks: a hand-written PyTorch + peft loop, and ftlab through its Lightning module.

Each `run_*` builds a fresh model from the shared folder, runs `warmup + steps` optimizer steps (plus one memory
step and two profiled steps when asked) on the shared batches and returns `common.summarize`'s dict.
"""

from __future__ import annotations

import statistics
from typing import Any

import common as c


def hand_loop(name: str, warmup: int, steps: int, memory: bool, profile: bool) -> dict[str, Any]:
    """What a researcher writes by hand: HF model (+ peft LoRA), the model's own loss, AdamW, nothing else."""
    import torch
    from peft import get_peft_model

    n = warmup + steps + c.extra_steps(memory, profile)
    data = c.batches(c.sft_data(n * c.BATCH), n)
    torch.manual_seed(c.SEED)
    model = c.load_model()
    if name.endswith("lora"):
        model = get_peft_model(model, c.lora_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=c.LR, weight_decay=0.0)
    clock = c.Clock(warmup, steps)
    extra = c.instrument(clock, memory, profile, lambda: c.state_mb(model, optimizer))
    model.train()
    for batch in data:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        clock.tick()
    return c.summarize(clock, _tokens(data, warmup, steps), extra)


def _tokens(data: list[Any], warmup: int, steps: int) -> float:
    """Non-padding tokens per step over the timed steps (attention mask ones)."""
    return statistics.mean(int(b.attention_mask.sum()) for b in data[warmup : warmup + steps])


def _fit(module: Any, dm: Any, clock: Any, n: int) -> Any:
    trainer = c.quiet_trainer(c.tempfile_root(), n, [c.lightning_clock(clock)])
    trainer.fit(module, dm)
    return trainer


def _module(method: str, objective: Any) -> Any:
    import lightning.pytorch as pl
    import torch

    from ftlab.models import Pretrained
    from ftlab.module import FineTuneModule

    pl.seed_everything(c.SEED, verbose=False)
    return FineTuneModule(
        Pretrained(str(c.model_folder())),
        c.ftlab_method(method),
        objective,
        optimizer=lambda p: torch.optim.AdamW(p, lr=c.LR, weight_decay=0.0),
    )


def ftlab_sft(
    name: str, warmup: int, steps: int, memory: bool, profile: bool, seq: int = c.SEQ, batch: int = c.BATCH
) -> dict[str, Any]:
    """ftlab SFT with LoRA (`..._lora`) or full fine-tuning (`..._full`); `ftlab_sft_pairs`: SFT with LoRA on the
    DPO benchmark's rows (chosen and rejected answers as 2B SFT rows), the memory baseline of DPO."""
    from ftlab.objectives import SFT

    n = warmup + steps + c.extra_steps(memory, profile)
    if name == "ftlab_sft_pairs":
        dm = c.pair_data(n * c.BATCH // 2, as_sft=True)
    else:
        dm = c.sft_data(n * batch, max_length=seq, batch_size=batch)
    module = _module("full" if name.endswith("full") else "lora", SFT())
    clock = c.Clock(warmup, steps)
    extra = c.instrument(clock, memory, profile, lambda: c.state_mb(module.model, module.trainer.optimizers[0]))
    _fit(module, dm, clock, n)
    return c.summarize(clock, _tokens(c.batches(dm, n), warmup, steps), extra)


def ftlab_dpo(name: str, warmup: int, steps: int, memory: bool, profile: bool) -> dict[str, Any]:
    from ftlab.objectives import DPO

    n = warmup + steps + c.extra_steps(memory, profile)
    dm = c.pair_data(n * c.BATCH // 2)
    module = _module("lora", DPO(beta=c.BETA))
    clock = c.Clock(warmup, steps)
    extra = c.instrument(clock, memory, profile, lambda: c.state_mb(module.model, module.trainer.optimizers[0]))
    _fit(module, dm, clock, n)
    return c.summarize(clock, _tokens(c.batches(dm, n), warmup, steps), extra)


def ftlab_grpo(name: str, warmup: int, steps: int, memory: bool, profile: bool) -> dict[str, Any]:
    """ftlab GRPO with LoRA; `ftlab_grpo_merged`: the same with `merge_for_sampling=True`;
    `ftlab_grpo_static`: the same with `sampler="static"` (static KV cache decode loop)."""
    from ftlab.objectives import GRPO
    from ftlab.rewards import FunctionReward

    n = warmup + steps + c.extra_steps(memory, profile)
    counter = c.CountingReward(c.target_token())
    objective = GRPO(
        rewards=[FunctionReward(counter, name="token_share")],
        num_generations=c.GRPO_G,
        max_new_tokens=c.GRPO_NEW_TOKENS,
        temperature=1.0,
        top_p=1.0,
        beta=c.GRPO_BETA,
        epsilon=c.GRPO_EPSILON,
        scale_rewards=True,
        loss_level="token",
        updates_per_batch=1,
        max_grad_norm=1.0,
        merge_for_sampling=name.endswith("merged"),
        sampler="static" if name.endswith("static") else "generate",
    )
    module = _module("lora", objective)
    clock = c.Clock(warmup, steps)
    extra = c.instrument(clock, memory, profile, lambda: c.state_mb(module.model, module.trainer.optimizers[0]))
    _fit(module, c.prompt_data(), clock, n)
    return c.summarize(clock, counter.tokens_per_step(c.prompt_data(), warmup, steps), extra)
