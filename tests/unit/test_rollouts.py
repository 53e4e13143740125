"""Sampling and scoring completions: EOS masks, left padding, group layout, reward sources."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftlab.batches import PromptBatch
from ftlab.errors import FTLabError
from ftlab.methods import LoRA
from ftlab.objectives.rollouts import Rollout, completion_logps, sample
from ftlab.rewards.sources import FunctionReward, total_reward


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return tiny_llama.load_model(AutoModelForCausalLM).eval()


def prompts(tokenizer, texts: list[str]) -> PromptBatch:
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    return PromptBatch(
        enc["input_ids"],
        enc["attention_mask"],
        torch.arange(len(texts)),
        prompts=texts,
        columns={"answer": [str(i) for i in range(len(texts))]},
    )


def test_samples_are_grouped_and_masked_after_eos(llama, tokenizer) -> None:
    torch.manual_seed(0)
    batch = prompts(tokenizer, ["hello there friend", "a"])
    rollout = sample(llama, tokenizer, batch, num_samples=3, max_new_tokens=6)
    assert rollout.sequences.shape[0] == 6 and rollout.prompts == ["hello there friend"] * 3 + ["a"] * 3
    assert rollout.columns == {"answer": ["0", "0", "0", "1", "1", "1"]}
    assert torch.equal(rollout.sequences[:3, : rollout.prompt_length], batch.input_ids[[0, 0, 0]])
    for row, ids in enumerate(rollout.completion_ids):
        assert len(ids) == int(rollout.completion_mask[row].sum())
        assert tokenizer.eos_token_id not in ids[:-1]  # nothing after the first EOS is kept


def test_forced_eos_masks_the_rest() -> None:
    # a hand-made rollout: completion (5, EOS=2, 7) keeps 5 and EOS, drops 7 from the mask
    class Tok:
        pad_token_id, eos_token_id = 0, 2

    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rollout = Rollout(torch.tensor([[9, 5, 2, 0]]), torch.tensor([[1, 1, 1, 0]]), mask, 1, ["p"], ["c"], [[5, 2]])
    assert rollout.completion_tokens.tolist() == [[5, 2, 0]]
    assert rollout.select(torch.tensor([0])).completion_ids == [[5, 2]]


def test_left_padding_does_not_change_log_probs(llama, tokenizer) -> None:
    torch.manual_seed(0)
    batch = prompts(tokenizer, ["hello there friend, how are you", "a"])
    rollout = sample(llama, tokenizer, batch, num_samples=1, max_new_tokens=5)
    with torch.no_grad():
        logps, entropy, _ = completion_logps(llama, rollout)
        # row 1 again without its left padding
        keep = rollout.attention_mask[1].bool()
        alone = Rollout(
            rollout.sequences[1:, keep],
            rollout.attention_mask[1:, keep],
            rollout.completion_mask[1:],
            int(batch.attention_mask[1].sum()),
            ["a"],
            rollout.completions[1:],
            rollout.completion_ids[1:],
        )
        single, _, _ = completion_logps(llama, alone)
    mask = rollout.completion_mask[1].bool()
    torch.testing.assert_close(logps[1][mask], single[0][mask], rtol=1e-4, atol=1e-4)
    assert (entropy >= 0).all() and (logps <= 0).all()


def test_reward_sources_weigh_and_check(tokenizer) -> None:
    rollout = Rollout(
        torch.zeros(2, 3, dtype=torch.long),
        torch.ones(2, 3),
        torch.ones(2, 2),
        1,
        ["p", "q"],
        ["yes", "no"],
        [[1], [2]],
        {"answer": ["yes", "yes"]},
    )

    def exact(prompts, completions, completion_ids, answer, **_) -> list[float]:
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    def length(prompts, completions, completion_ids, **_) -> list[float]:
        return [len(c) for c in completions]

    total, parts = total_reward(
        [FunctionReward(exact, weight=2.0), FunctionReward(length, weight=0.5)], rollout, torch.device("cpu")
    )
    assert total.tolist() == [2.0 + 1.5, 0.0 + 1.0] and parts["reward/exact"].item() == 0.5
    with pytest.raises(FTLabError, match="reward function broken returned 1 values for 2 completions"):
        FunctionReward(lambda **_: [1.0], name="broken").score(rollout, torch.device("cpu"))
    with pytest.raises(FTLabError, match=r"returned a non-finite value \(nan\)"):
        FunctionReward(lambda **_: [1.0, float("nan")]).score(rollout, torch.device("cpu"))


def test_sampling_stops_at_every_end_of_turn_token(tiny_llama, tokenizer) -> None:
    # a model whose generation config names a second end-of-turn token (as Gemma's <end_of_turn>), made
    # overwhelmingly likely: completions must stop there and be masked after it
    model = tiny_llama.load_model(AutoModelForCausalLM).eval()
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 265]
    with torch.no_grad():
        model.lm_head.weight[265] = model.lm_head.weight.abs().max() * 50
    rollout = sample(model, tokenizer, prompts(tokenizer, ["hello"]), num_samples=2, max_new_tokens=8)
    assert rollout.completion_ids == [[265], [265]]
    assert rollout.completion_mask.sum().item() == 2


def test_shared_prompt_pass_equals_the_full_pass(tiny_llama, tokenizer) -> None:
    # GRPO's samples of a prompt share its KV cache in the log-prob pass: values and gradients must equal
    # those of running every row in full

    torch.manual_seed(0)
    model = LoRA(r=4).apply(tiny_llama.load_model(AutoModelForCausalLM))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    rollout = sample(model, tokenizer, prompts(tokenizer, ["hello there friend", "a"]), num_samples=3, max_new_tokens=5)
    assert rollout.group == 3
    grouped, _, _ = completion_logps(model, rollout)
    grouped.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    rollout.group = 1
    full, _, _ = completion_logps(model, rollout)
    full.sum().backward()
    torch.testing.assert_close(grouped, full, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6)


def lora_model(tiny_llama, scale: float = 0.1):
    """A LoRA model whose adapter changes the outputs (B drawn, not zero)."""

    torch.manual_seed(0)
    model = LoRA(r=4).apply(tiny_llama.load_model(AutoModelForCausalLM))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale)
    return model


def plain_greedy(model, tokenizer, batch: PromptBatch, num_samples: int, max_new_tokens: int) -> torch.Tensor:
    """`generate` as it comes: each prompt prefilled once per sample (as `num_return_sequences` does), unmerged."""
    with torch.no_grad():
        return model.eval().generate(
            input_ids=batch.input_ids.repeat_interleave(num_samples, 0),
            attention_mask=batch.attention_mask.repeat_interleave(num_samples, 0),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )


def test_shared_prefill_and_merged_adapter_sample_as_plain_generate(tiny_llama, tokenizer) -> None:
    # greedy decoding, left-padded prompts of different lengths: the prompt prefilled once per group and
    # the LoRA update merged give the very tokens of plain `generate` (every prompt prefilled G times)
    model = lora_model(tiny_llama)
    batch = prompts(tokenizer, ["hello there friend, how are you", "a b", "the cat"])
    expected = plain_greedy(model, tokenizer, batch, 3, 8)
    for merged in (None, partial(LoRA().merged_for_decoding, model)):
        rollout = sample(model, tokenizer, batch, 3, 8, merged=merged, do_sample=False)
        assert rollout.group == 3 and rollout.sequences.shape[0] == 9
        width = min(expected.shape[1], rollout.sequences.shape[1])
        kept = rollout.attention_mask[:, :width].bool()
        assert torch.equal(rollout.sequences[:, :width][kept], expected[:, :width][kept])


def test_merged_sampling_gives_the_weights_back(tiny_llama, tokenizer) -> None:
    # merge, then unmerge: the base weights come back within float32 rounding, the adapter is active again,
    # and the merged model's logits equal the adapter's (within 1e-5)
    model = lora_model(tiny_llama)
    merged = partial(LoRA().merged_for_decoding, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = prompts(tokenizer, ["hello there friend"]).input_ids
    with torch.no_grad():
        unmerged_logits = model(input_ids=ids).logits
        with merged() as m:
            merged_logits = m(input_ids=ids).logits
            assert any(getattr(layer, "merged", False) for layer in model.modules())
    torch.testing.assert_close(merged_logits, unmerged_logits, rtol=1e-5, atol=1e-5)
    assert not any(getattr(layer, "merged", False) for layer in model.modules())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=1e-6)
    torch.manual_seed(1)
    sample(model, tokenizer, prompts(tokenizer, ["hello"]), num_samples=2, max_new_tokens=4, merged=merged)
    assert max((p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()) < 1e-6
