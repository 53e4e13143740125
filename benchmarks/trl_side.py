"""TRL's trainers on the shared setup: SFTTrainer, DPOTrainer, GRPOTrainer (trl is the `bench` extra only).

Every TRL run: the same saved model folder, LoRA through `peft_config` (r 8, alpha 16, no dropout, all linear
layers but the head), `adamw_torch` (lr 5e-4, weight decay 0, constant rate), fp32, no gradient checkpointing
(TRL's default turns it on; ftlab does not checkpoint), no evaluation, no checkpoints, no progress bar,
`report_to="none"`, TRL's default `logging_steps` (500: no log call in a benchmark run, as ftlab's side runs
without a logger), dataloader workers 0, the dataset read in order. TRL is given ftlab's token ids (its own
tokenization would cut and template differently), so both sides train on the same tokens:
- SFT: `input_ids` and `labels` columns (prompt and padding at -100), gradient clipping off as in ftlab;
- DPO: `prompt_ids`/`chosen_ids`/`rejected_ids` (a subclass skips TRL's tokenization), sigmoid loss, beta 0.1,
  the reference every step with the adapters off, clipping off;
- GRPO: 8 prompts x G 4 per step (TRL counts completions: batch 32), 32 new tokens, temperature 1, top-p 1, no
  top-k, beta 0.04 (reference = adapters off), epsilon 0.2, mu 1, `loss_type="dapo"` (token-level, as ftlab's
  `loss_level="token"`), rewards scaled by the group std, clipping 1.0 as ftlab's GRPO default, no KL
  importance-sampling correction (ftlab has none); prompt ids mapped from the rendered text to ftlab's ids.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import common as c
import contenders


def _args(cls: Any, n: int, batch: int, **kw: Any) -> Any:
    return cls(
        output_dir=c.tempfile_root(),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        max_steps=n,
        learning_rate=c.LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        report_to="none",
        eval_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=c.SEED,
        **kw,
    )


def _train(trainer: Any, clock: c.Clock, memory: bool, profile: bool) -> dict[str, Any]:
    extra = c.instrument(clock, memory, profile, lambda: c.state_mb(trainer.model, trainer.optimizer))
    with contextlib.redirect_stdout(io.StringIO()):  # TRL's per-step log lines
        trainer.train()
    return extra


def trl_sft(name: str, warmup: int, steps: int, memory: bool, profile: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    n = warmup + steps + c.extra_steps(memory, profile)
    dm = c.sft_data(n * c.BATCH)
    rows = [{"input_ids": list(ex.input_ids), "labels": list(ex.labels)} for ex in dm.train_set]
    args = _args(SFTConfig, n, c.BATCH, max_length=c.SEQ, max_grad_norm=0.0, train_sampling_strategy="sequential")
    torch.manual_seed(c.SEED)
    clock = c.Clock(warmup, steps)
    trainer = SFTTrainer(
        model=c.load_model(),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=dm.tokenizer,
        peft_config=c.lora_config(),
        callbacks=[c.trl_clock(clock)],
    )
    extra = _train(trainer, clock, memory, profile)
    return c.summarize(clock, contenders._tokens(c.batches(dm, n), warmup, steps), extra)


def trl_dpo(name: str, warmup: int, steps: int, memory: bool, profile: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """Takes ftlab's tokenized pairs as they are (prompt_ids, chosen_ids, rejected_ids)."""

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset

    n = warmup + steps + c.extra_steps(memory, profile)
    dm = c.pair_data(n * c.BATCH // 2)
    pairs = dm.train_set
    assert all(p.chosen_labels == p.chosen_ids and p.rejected_labels == p.rejected_ids for p in pairs)
    dataset = Dataset.from_dict(
        {
            "prompt_ids": [p.prompt_ids for p in pairs],
            "chosen_ids": [p.chosen_ids for p in pairs],
            "rejected_ids": [p.rejected_ids for p in pairs],
        }
    )
    args = _args(
        DPOConfig,
        n,
        c.BATCH // 2,
        max_grad_norm=0.0,
        beta=c.BETA,
        loss_type=["sigmoid"],
        max_length=c.SEQ,
        precompute_ref_log_probs=False,
        train_sampling_strategy="sequential",
    )
    torch.manual_seed(c.SEED)
    clock = c.Clock(warmup, steps)
    trainer = PretokenizedDPOTrainer(
        model=c.load_model(),
        args=args,
        train_dataset=dataset,
        processing_class=dm.tokenizer,
        peft_config=c.lora_config(),
        callbacks=[c.trl_clock(clock)],
    )
    extra = _train(trainer, clock, memory, profile)
    return c.summarize(clock, contenders._tokens(c.batches(dm, n), warmup, steps), extra)


def trl_grpo(name: str, warmup: int, steps: int, memory: bool, profile: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    n = warmup + steps + c.extra_steps(memory, profile)
    dm = c.prompt_data()
    ids_by_text = {ex.text: list(ex.prompt_ids) for ex in dm.train_set}
    assert len(ids_by_text) == len(dm.train_set), "two prompts render to the same text"

    class FtlabTokensGRPOTrainer(GRPOTrainer):
        """GRPOTrainer given ftlab's prompt token ids."""

        def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict]:
            return [ids_by_text[p] for p in prompts], None, {}

    args = _args(
        GRPOConfig,
        n,
        c.BATCH * c.GRPO_G,  # TRL counts completions, not prompts
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        num_generations=c.GRPO_G,
        max_completion_length=c.GRPO_NEW_TOKENS,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=c.GRPO_BETA,
        epsilon=c.GRPO_EPSILON,
        num_iterations=1,
        loss_type="dapo",
        scale_rewards="group",
        use_bias_correction_kl=False,
        max_grad_norm=1.0,
        shuffle_dataset=False,
    )
    counter = c.CountingReward(c.target_token())
    torch.manual_seed(c.SEED)
    clock = c.Clock(warmup, steps)
    trainer = FtlabTokensGRPOTrainer(
        model=str(c.model_folder()),
        reward_funcs=counter,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [ex.text for ex in dm.train_set]}),
        processing_class=dm.tokenizer,
        peft_config=c.lora_config(),
        callbacks=[c.trl_clock(clock)],
    )
    extra = _train(trainer, clock, memory, profile)
    return c.summarize(clock, counter.tokens_per_step(dm, warmup, steps), extra)
