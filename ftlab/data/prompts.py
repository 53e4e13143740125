"""Prompt data for online RL (GRPO, PPO): prompts to sample answers for, with the row's other fields for rewards.

A row holds a prompt (a string, or a list of chat messages) and any other fields (e.g. GSM8K's reference
`answer`); the other fields travel with the prompt, untouched, in `PromptBatch.columns`, so a reward function
can compare a completion with them. With `chat_template` on, the prompt goes through the tokenizer's chat
template with the generation prompt added (`add_generation_prompt=True`): it ends exactly where the
assistant's answer begins (`<|assistant|>\\n` for ftlab's default template). The template is rendered turn by
turn and each piece tokenized on its own with `ftlab.data.chat`, so a prompt has the same token ids here as
in SFT and preference data (a multi-turn prompt's earlier assistant turns included). With it off, the
prompt is a raw string, tokenized as is after the BOS token (if the model uses one).

Lengths: `max_length` (the base class's) bounds the prompt here, not prompt + answer: the answer's length is
the rollout's `max_new_tokens`, so a run's longest sequence is max_prompt_length + max_new_tokens.
`max_prompt_length` (default: max_length) may set a tighter bound. A longer prompt is cut from the LEFT (its
end, the question asked and the generation prompt, is kept; a BOS token stays first), as
PreferenceDataModule cuts prompts, and counted as `truncated_prompt`; no prompt is dropped. A missing or
empty prompt is an error naming file, row and key.

Batches are LEFT-padded with the pad token (attention_mask 0 on the left), so that generated tokens follow
every prompt at the same position (see `PromptBatch`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from ftlab.batches import PromptBatch
from ftlab.data.base import FineTuneDataModule
from ftlab.data.chat import Messages, render, render_segments, tokenize_segments
from ftlab.data.files import require_columns
from ftlab.data.preference import message_list
from ftlab.errors import FTLabError

log = logging.getLogger("ftlab")


@dataclass
class PromptExample:
    """One tokenized prompt, its text as the model sees it, and the row's other fields."""

    prompt_ids: list[int]
    text: str
    """The rendered prompt (chat template applied); after a cut, the decoded kept tokens (BOS not included)."""
    columns: dict[str, Any] = field(default_factory=dict)
    row: int = 0
    """Row number in its file (for messages)."""
    index: int = 0
    """Position in its split, set once the split is final."""


def prompt_segments(tok: PreTrainedTokenizerBase, messages: Messages, where: str) -> list[tuple[str, bool]]:
    """The pieces of the rendered prompt, ending with the generation prompt; only assistant turns carry `True`.

    `render_segments` splits the conversation at its assistant turns; everything after the last one (the
    final user turn and the generation prompt) becomes one piece, exactly as PreferenceDataModule's prompt
    is split, so the two tokenize a prompt identically.
    """
    segments = render_segments(tok, messages, where)
    last = max((i for i, (_, turn) in enumerate(segments) if turn), default=-1)
    segments = segments[: last + 1]
    done = "".join(text for text, _ in segments)
    full = render(tok, messages, generation_prompt=True, where=where)
    if not full.startswith(done):
        raise FTLabError(
            f"{where}: the chat template does not render the prompt as an extension of its earlier turns "
            "(it rewrites them), so the prompt cannot be tokenized turn by turn"
        )
    return [*segments, (full[len(done) :], False)]


class PromptDataModule(FineTuneDataModule):
    """Prompts for online RL: each batch is a `PromptBatch` of left-padded prompts and their rows' other fields.

    Args:
        prompt_field: Column holding the prompt: a string, or a list of chat messages ending in a user turn.
        system_prompt: A system message put first in every prompt that does not start with one (chat
            template only).
        chat_template: Render the prompt with the tokenizer's chat template and the generation prompt, so it
            ends where the assistant's answer begins; False tokenizes the prompt string as raw text.
        max_prompt_length: Longest prompt in tokens, at most max_length (the default); longer prompts are cut
            from the left, keeping a BOS token first.
        **kwargs: See FineTuneDataModule; max_length bounds the prompt (the answer's length is the
            rollout's max_new_tokens).
    """

    batch_type: ClassVar[type] = PromptBatch

    def __init__(
        self,
        *args,
        prompt_field: str = "prompt",
        system_prompt: str | None = None,
        chat_template: bool = True,
        max_prompt_length: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.prompt_field = prompt_field
        self.system_prompt = system_prompt
        self.chat_template = chat_template
        self.max_prompt_length = self.max_length if max_prompt_length is None else max_prompt_length
        if not 2 <= self.max_prompt_length <= self.max_length:
            raise FTLabError(
                f"data max_prompt_length must be between 2 and max_length={self.max_length} "
                f"(max_length bounds prompts in prompt data), got {self.max_prompt_length}"
            )
        if system_prompt and not chat_template:
            raise FTLabError("data system_prompt needs chat_template: true (raw-text prompts have no system turn)")

    # --- rows to prompts (what a dataset layout overrides)
    def fields(self) -> list[str]:
        """The columns every file must have."""
        return [self.prompt_field]

    def prompt(self, row: dict[str, Any], where: str) -> str | Messages:
        """The row's prompt: a non-empty string, or a list of chat messages."""
        value = row.get(self.prompt_field)
        if isinstance(value, str):
            if not value.strip():
                raise FTLabError(f"{where} has an empty '{self.prompt_field}' field")
            return value
        if value is None:
            present = ", ".join(k for k, v in row.items() if v is not None)
            raise FTLabError(f"{where} has no '{self.prompt_field}' field (it has: {present})")
        return message_list(value, where, self.prompt_field)

    def columns(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        """The fields passed to reward functions: every column but the prompt's, as read."""
        return {k: v for k, v in row.items() if k != self.prompt_field}

    # --- prompts to tokens
    def segments(self, prompt: str | Messages, where: str) -> list[tuple[str, bool]]:
        if not self.chat_template:
            if not isinstance(prompt, str):
                raise FTLabError(f"{where} '{self.prompt_field}' holds chat messages but chat_template is false")
            return [(prompt, False)]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if messages[-1]["role"] == "assistant":
            raise FTLabError(
                f"{where} '{self.prompt_field}' ends with an assistant message; a prompt must end with a user turn"
            )
        if self.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return prompt_segments(self.tokenizer, messages, where)

    def encode(self, prompt: str | Messages, where: str) -> tuple[list[int], str]:
        """Token ids and text of a prompt, cut from the left to max_prompt_length."""
        segments = self.segments(prompt, where)
        ids, _ = tokenize_segments(self.tokenizer, segments)
        text = "".join(piece for piece, _ in segments)
        if len(ids) > self.max_prompt_length:
            bos = self.tokenizer.bos_token_id
            head = ids[:1] if bos is not None and ids[0] == bos else []
            keep = self.max_prompt_length - len(head)  # >= 1
            ids = head + ids[len(ids) - keep :]  # the prompt's end: the question asked, the generation prompt
            text = self.tokenizer.decode(ids[len(head) :])
            self.count("truncated_prompt")
        return ids, text

    def build(self, rows: Dataset, source: str) -> list[PromptExample]:
        require_columns(rows, source, self.fields())
        cut_before = self.stats.get("truncated_prompt", 0)
        examples: list[PromptExample] = []
        for i, row in enumerate(rows):
            where = f"data file {source} row {i}"
            ids, text = self.encode(self.prompt(row, where), where)
            examples.append(PromptExample(ids, text, self.columns(row, where), row=i))
            self.count("rows")
        cut = self.stats.get("truncated_prompt", 0) - cut_before
        if cut:
            log.warning("%s: cut %d prompts from the left to max_prompt_length=%d", source, cut, self.max_prompt_length)
        return examples

    # --- examples to batches
    def collate(self, examples: list[PromptExample]) -> PromptBatch:
        width = max(len(ex.prompt_ids) for ex in examples)
        ids = torch.full((len(examples), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, ex in enumerate(examples):
            n = len(ex.prompt_ids)
            ids[row, width - n :] = torch.tensor(ex.prompt_ids)  # left padding: every prompt ends at column P-1
            mask[row, width - n :] = 1
        keys = list(dict.fromkeys(k for ex in examples for k in ex.columns))  # files may differ: None where absent
        return PromptBatch(
            input_ids=ids,
            attention_mask=mask,
            index=torch.tensor([ex.index for ex in examples], dtype=torch.long),
            prompts=[ex.text for ex in examples],
            columns={k: [ex.columns.get(k) for ex in examples] for k in keys},
            num_tokens=int(mask.sum()),
        )
