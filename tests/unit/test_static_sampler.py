"""The `static` sampler (a decode loop over a static KV cache) against transformers' `generate`."""

from __future__ import annotations

from functools import partial

import torch
from transformers import GenerationConfig

from ftlab.methods import LoRA
from ftlab.objectives.rollouts import sample
from ftlab.objectives.static_decode import static_generate
from tests.unit.test_rollouts import lora_model, plain_greedy, prompts


def test_static_sampler_gives_generates_greedy_tokens(tiny_llama, tokenizer) -> None:
    # left-padded prompts of different lengths, a LoRA adapter with non-zero update, merged or not
    model = lora_model(tiny_llama)
    batch = prompts(tokenizer, ["hello there friend, how are you", "a b", "the cat"])
    expected = plain_greedy(model, tokenizer, batch, 2, 8)
    for merged in (None, partial(LoRA().merged_for_decoding, model)):
        rollout = sample(model, tokenizer, batch, 2, 8, merged=merged, do_sample=False, engine="static")
        width = min(expected.shape[1], rollout.sequences.shape[1])
        kept = rollout.attention_mask[:, :width].bool()
        assert kept[:, batch.input_ids.shape[1] :].any()  # completions were compared, not only prompts
        assert torch.equal(rollout.sequences[:, :width][kept], expected[:, :width][kept])


def test_static_sampler_draws_as_generate(tiny_llama, tokenizer) -> None:
    # the same warpers in the same order and one multinomial draw per step: from the same seed, the very
    # tokens of `generate` sampling with temperature, top-k and top-p (hence the same distribution)
    model = lora_model(tiny_llama).eval()
    batch = prompts(tokenizer, ["hello there friend, how are you", "a b"])
    ids, mask = batch.input_ids.repeat_interleave(3, 0), batch.attention_mask.repeat_interleave(3, 0)
    config = GenerationConfig(
        do_sample=True,
        temperature=0.7,
        top_k=50,
        top_p=0.9,
        max_new_tokens=10,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id],
    )
    with torch.no_grad():
        torch.manual_seed(3)
        expected = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        torch.manual_seed(3)
        ours = static_generate(model, ids, mask, config)
    assert ours.shape == expected.shape
    assert torch.equal(ours, expected)
