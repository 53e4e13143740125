"""Sampling completions for online RL, and the per-token log-probabilities of those completions.

`sample` runs transformers' `generate` (KV cache, sampling with temperature/top-p, no top-k unless
asked, stop at EOS) without gradients and without dropout on left-padded prompts; each prompt's G
samples are adjacent. Two savings, each equal to plain `generate` up to float rounding (tested with
greedy decoding): each prompt is prefilled once, not G times (its KV cache repeated G times before
`generate` continues from it), unless the method puts virtual tokens before the input (`virtual_tokens`,
from the step context); and, opt-in (`merged`, the step context's), the method is folded into the
weights while sampling (LoRA: one matmul per linear layer and decode step instead of three), then taken
out. Unmerging subtracts the same update, so the frozen base weights come back only to within float32
rounding (about 1e-7 relative per step, a random walk over a run; TRL merges and unmerges the same way to
sync vLLM): the reference policy, which is the base model, drifts by that much, hence opt-in. Which
methods fold (not quantized bases, not prompt learning) is the method's to say (`merges_for_decoding`).

A completion's mask covers its tokens up to and including the first EOS;
what follows is replaced by padding. `completion_logps` recomputes log π(token) for those tokens
with position ids taken from the attention mask, as `generate` does, so left padding does not shift
positions.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from ftlab.batches import PromptBatch
from ftlab.errors import FTLabError


@dataclass
class Rollout:
    """Sampled completions. sequences/attention_mask [N, P + C]; completion_mask [N, C] (float 0/1)."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_length: int
    prompts: list[str]
    completions: list[str]
    completion_ids: list[list[int]]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    group: int = 1
    """Samples per prompt, adjacent rows (their prompt tokens are identical)."""
    virtual_tokens: int = 0
    """Positions the policy's method puts before the input (prompt learning): no shared prompt cache."""

    @property
    def completion_tokens(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length :]

    def select(self, rows: torch.Tensor) -> Rollout:
        """The rollout restricted to `rows` (a minibatch)."""
        picked = rows.tolist()
        return Rollout(
            sequences=self.sequences[rows],
            attention_mask=self.attention_mask[rows],
            completion_mask=self.completion_mask[rows],
            prompt_length=self.prompt_length,
            prompts=[self.prompts[i] for i in picked],
            completions=[self.completions[i] for i in picked],
            completion_ids=[self.completion_ids[i] for i in picked],
            columns={k: [v[i] for i in picked] for k, v in self.columns.items()},
            virtual_tokens=self.virtual_tokens,
        )  # a minibatch is no longer made of whole groups: group stays 1


def stop_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token that ends a turn: the tokenizer's EOS and the model's generation-config EOS ids
    (chat models often stop on an end-of-turn token, e.g. Gemma's <end_of_turn>, Phi-3's <|end|>)."""
    config_ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *(config_ids if isinstance(config_ids, list) else [config_ids])]
    return sorted({i for i in ids if i is not None})


def _shared_prefill(model: nn.Module, batch: PromptBatch, num_samples: int) -> Any:
    """The KV cache of every prompt but its last token, computed once and repeated `num_samples` times."""
    ids, mask = batch.input_ids[:, :-1], batch.attention_mask[:, :-1]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(num_samples)
    return cache


def sample(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: PromptBatch,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    merged: Callable[[], AbstractContextManager[nn.Module]] | None = None,
    do_sample: bool = True,
    virtual_tokens: int = 0,
    engine: str = "generate",
) -> Rollout:
    """G = `num_samples` completions per prompt (adjacent rows). `merged`: the policy with its method folded
    into the weights, to sample with; `virtual_tokens`: the method's (the step context gives both);
    `do_sample=False` decodes greedily (tests compare the fast paths with plain `generate` that way);
    `engine`: `generate` (transformers) or `static` (`static_decode.static_generate`, not with virtual tokens)."""
    if engine == "static" and virtual_tokens:
        raise FTLabError("the static sampler cannot decode with virtual tokens (prefix, prompt); use sampler: generate")
    stop = stop_ids(model, tokenizer)
    # the prompt is prefilled once (below) when it has a token before the last and G > 1
    share = engine == "generate" and num_samples > 1 and batch.input_ids.shape[1] > 1 and not virtual_tokens
    config = GenerationConfig(
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=top_k if do_sample else None,
        max_new_tokens=max_new_tokens,
        num_return_sequences=1 if share or engine == "static" else num_samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop,
        use_cache=True,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (merged or nullcontext)():
            extra: dict[str, Any] = {}
            ids, mask = batch.input_ids, batch.attention_mask
            if share:  # the static engine prefills every row itself
                extra["past_key_values"] = _shared_prefill(model, batch, num_samples)
                ids, mask = ids.repeat_interleave(num_samples, 0), mask.repeat_interleave(num_samples, 0)
            if engine == "static":
                from ftlab.objectives.static_decode import static_generate

                out = static_generate(
                    model, ids.repeat_interleave(num_samples, 0), mask.repeat_interleave(num_samples, 0), config
                )
            else:
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **extra)
    finally:
        model.train(was_training)
    prompt_length = batch.input_ids.shape[1]
    completions = out[:, prompt_length:]
    eos = torch.isin(completions, torch.tensor(stop, device=completions.device))
    width = completions.shape[1]
    first_eos = torch.where(eos.any(1), eos.float().argmax(1), torch.full_like(eos[:, 0], width, dtype=torch.long))
    mask = (torch.arange(width, device=out.device)[None, :] <= first_eos[:, None]).long()
    completions = torch.where(mask.bool(), completions, torch.full_like(completions, tokenizer.pad_token_id))
    prompt_mask = batch.attention_mask.repeat_interleave(num_samples, dim=0)
    ids = [row[m.bool()].tolist() for row, m in zip(completions, mask, strict=True)]
    return Rollout(
        sequences=torch.cat([batch.input_ids.repeat_interleave(num_samples, dim=0), completions], dim=1),
        attention_mask=torch.cat([prompt_mask, mask], dim=1),
        completion_mask=mask.float(),
        prompt_length=prompt_length,
        prompts=[p for p in batch.prompts for _ in range(num_samples)],
        completions=tokenizer.batch_decode(ids, skip_special_tokens=True),
        completion_ids=ids,
        columns={k: [v for v in values for _ in range(num_samples)] for k, values in batch.columns.items()},
        group=num_samples,
        virtual_tokens=virtual_tokens,
    )


def _completion_logits(model: nn.Module, rollout: Rollout, hidden: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [N, C, V] at the positions that predict each completion token (and hidden states there)."""
    ids, mask, p, group = rollout.sequences, rollout.attention_mask, rollout.prompt_length, rollout.group
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    width = ids.shape[1] - p
    if group > 1 and not hidden and not rollout.virtual_tokens:
        # A group's G samples share their prompt: run it once, repeat its KV cache G times (gradients flow
        # back through the repeat), and let the completions attend to it.
        head = model(
            input_ids=ids[::group, :p],
            attention_mask=mask[::group, :p],
            position_ids=positions[::group, :p],
            use_cache=True,
            logits_to_keep=1,
        )
        cache = head.past_key_values
        cache.batch_repeat_interleave(group)
        rest = model(
            input_ids=ids[:, p:-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, p:-1],
            past_key_values=cache,
            use_cache=True,
        )
        return torch.cat([head.logits[:, -1:].repeat_interleave(group, 0), rest.logits], dim=1), None
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=False,
        output_hidden_states=hidden,
        logits_to_keep=width + 1,
    )
    states = out.hidden_states[-1][:, -(width + 1) : -1] if hidden else None
    return out.logits[:, -(width + 1) : -1], states  # the position before each completion token predicts it


def completion_logps(
    model: nn.Module, rollout: Rollout, hidden: bool = False, entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(log π(token) [N, C], entropy [N, C] without gradient or None, last hidden state before each
    token [N, C, H] or None). The head runs only on the C positions that predict completion tokens."""
    logits, states = _completion_logits(model, rollout, hidden)
    logits = logits.float()
    norm = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, rollout.completion_tokens[..., None]).squeeze(-1) - norm
    spread = None
    if entropy:
        with torch.no_grad():
            spread = norm - (logits.softmax(-1) * logits).sum(-1)
    return logps, spread, states
