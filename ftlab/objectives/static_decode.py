"""A decode loop over a static KV cache: the `static` sampler of online RL.

transformers' `generate` grows its cache each step and runs Python-heavy bookkeeping around every
forward; on a GPU a small model's decode step is then bound by launches, not by memory bandwidth.
Here the cache (`StaticCache`) and the attention mask keep one shape for the whole completion, so
the one-token step can be compiled once (`torch.compile`, CUDA graphs with "reduce-overhead") and
replayed. Sampling follows `generate`: logits → temperature → top-k → top-p → softmax → multinomial
(greedy: argmax); a finished row receives padding; the loop ends when every row has stopped. On CPU
the step runs uncompiled and gives `generate`'s tokens for greedy decoding (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessorList, StaticCache
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def _warpers(config: GenerationConfig) -> LogitsProcessorList:
    """generate's sampling warpers, in its order."""
    warpers = LogitsProcessorList()
    if not config.do_sample:
        return warpers
    if config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    return warpers


def _step_function(model: nn.Module, compile_step: bool) -> Callable[..., torch.Tensor]:
    def step(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: StaticCache, at: torch.Tensor):
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            cache_position=at,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    return torch.compile(step, mode="reduce-overhead", dynamic=False) if compile_step else step


@torch.no_grad()
def static_generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    compile_step: bool | None = None,
) -> torch.Tensor:
    """Prompt ids [N, P] (left-padded) followed by up to `config.max_new_tokens` new tokens, as `generate`.

    `compile_step`: compile the one-token step (default: on CUDA only)."""
    n, p = input_ids.shape
    width = p + config.max_new_tokens
    device = input_ids.device
    if compile_step is None:
        compile_step = device.type == "cuda"
    base = getattr(model, "get_base_model", lambda: model)()
    cache = StaticCache(config=base.config, max_cache_len=width)
    mask = torch.cat([attention_mask, attention_mask.new_zeros(n, config.max_new_tokens)], dim=1)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = (
        model(
            input_ids=input_ids,
            attention_mask=mask[:, :p] if not compile_step else mask,
            position_ids=positions,
            past_key_values=cache,
            cache_position=torch.arange(p, device=device),
            use_cache=True,
            logits_to_keep=1,
        )
        .logits[:, -1]
        .float()
    )
    step = _step_function(model, compile_step)
    warpers = _warpers(config)
    stop = torch.tensor(list(config.eos_token_id or []), device=device, dtype=torch.long)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    unfinished = torch.ones(n, dtype=torch.bool, device=device)
    next_position = attention_mask.sum(-1, keepdim=True)
    out = [input_ids]
    for t in range(config.max_new_tokens):
        sequence = torch.cat(out, dim=1)
        scores = warpers(sequence, logits)
        if config.do_sample:
            token = torch.multinomial(scores.softmax(-1), num_samples=1).squeeze(1)
        else:
            token = scores.argmax(-1)
        token = torch.where(unfinished, token, torch.full_like(token, pad))
        out.append(token[:, None])
        unfinished &= ~torch.isin(token, stop)
        if not unfinished.any() or t == config.max_new_tokens - 1:
            break
        mask[:, p + t] = 1
        at = torch.tensor([p + t], device=device)
        step_mask = mask if compile_step else mask[:, : p + t + 1]
        logits = step(token[:, None], step_mask, next_position + t, cache, at)
    return torch.cat(out, dim=1)
