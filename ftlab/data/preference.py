"""Preference data: a prompt and two answers to it, chosen and rejected, for DPO and reward models.

Convention (TRL's preference format, used by DPO, IPO, KTO-pairs and reward-model trainers): a row
holds `prompt`, `chosen` and `rejected`, either all strings (standard form) or, in the
conversational form, the prompt as a list of chat messages and each answer as a list holding one
assistant message. Both forms become chat messages here (a string prompt is one user turn, after an
optional system prompt) and go through the tokenizer's chat template with `ftlab.data.chat`, exactly
as an SFT row does: the answer's text and its end-of-turn marker (EOS for ftlab's default template)
carry the labels. Unlike SFT, assistant turns inside a multi-turn prompt carry no labels: only the
final answer is compared.

Truncation: the prompt is capped at `max_prompt_length` tokens by cutting it from the left (its end,
the question being answered, is kept; a BOS token stays first), then both answers are cut from the
right to fit `max_length` (an answer cut this way loses its EOS). TRL cuts the same way (keep the
prompt's end) but may drop the BOS with it. Pairs with an empty (or whitespace-only) answer, or with
the same answer twice (no preference signal: DPO's gradient is zero), are dropped. Every cut and drop
is counted in `stats` per pair: rows, truncated_prompt, truncated_answer, dropped_empty_answer,
dropped_identical.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from datasets import Dataset

from ftlab.batches import PreferenceBatch
from ftlab.data.base import FineTuneDataModule
from ftlab.data.chat import IGNORE, Messages, render_segments, tokenize_segments
from ftlab.data.files import require_columns
from ftlab.errors import FTLabError

log = logging.getLogger("ftlab")


@dataclass
class PairExample:
    """One tokenized pair: the shared prompt, then each answer with its labels (-100 where no loss)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]
    row: int = 0
    """Row number in its file (for messages)."""
    index: int = 0
    """Position in its split, set once the split is final (the key of an objective's per-pair cache)."""


def padded_rows(
    rows: list[tuple[list[int], list[int], list[int]]], width: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, attention_mask) [len(rows), width] of (prompt ids, answer ids, answer labels) rows,
    right-padded; the labels are IGNORE but on the answer."""
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (prompt, answer, answer_labels) in enumerate(rows):
        end = len(prompt) + len(answer)
        ids[row, :end] = torch.tensor(prompt + answer)
        labels[row, len(prompt) : end] = torch.tensor(answer_labels)
        mask[row, :end] = 1
    return ids, labels, mask


def field(row: dict[str, Any], key: str, where: str) -> Any:
    """The value of `key` in a row; a missing (None) value is an error naming the row and key."""
    value = row.get(key)
    if value is None:
        present = ", ".join(k for k, v in row.items() if v is not None)
        raise FTLabError(f"{where} has no '{key}' field (it has: {present})")
    return value


def message_list(value: Any, where: str, key: str) -> Messages:
    """Chat messages (a list of {role, content} dicts, both strings) from a conversational field."""
    if not isinstance(value, list) or not value:
        raise FTLabError(f"{where} needs a string or a non-empty list of messages in '{key}'")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise FTLabError(f"{where} '{key}' message {i} needs string 'role' and 'content' keys")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def answer_text(value: Any, where: str, key: str) -> str:
    """An answer's text: a string, or the content of the one assistant message a list holds."""
    if isinstance(value, str):
        return value
    messages = message_list(value, where, key)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise FTLabError(f"{where} '{key}' must be a string or a list holding exactly one assistant message")
    return messages[0]["content"]


class PreferenceDataModule(FineTuneDataModule):
    """Preference pairs (prompt, chosen answer, rejected answer) for DPO and reward modelling.

    Batches stack the pairs: rows [0, B) are prompt + chosen, rows [B, 2B) prompt + rejected for the
    same prompts in the same order, right-padded to one width (see `PreferenceBatch`).

    Args:
        prompt_field: Column holding the prompt: a string, or a list of chat messages.
        chosen_field: Column holding the preferred answer: a string, or a list with one assistant message.
        rejected_field: Column holding the dispreferred answer, in the same forms.
        system_prompt: A system message put first in every prompt that does not start with one.
        max_prompt_length: Longest prompt in tokens (cut from the left); defaults to max_length // 2.
        **kwargs: See FineTuneDataModule (max_length bounds prompt + answer).
    """

    batch_type: ClassVar[type] = PreferenceBatch

    def __init__(
        self,
        *args,
        prompt_field: str = "prompt",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
        system_prompt: str | None = None,
        max_prompt_length: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.prompt_field = prompt_field
        self.chosen_field = chosen_field
        self.rejected_field = rejected_field
        self.system_prompt = system_prompt
        self.max_prompt_length = self.max_length // 2 if max_prompt_length is None else max_prompt_length
        if not 1 <= self.max_prompt_length < self.max_length:
            raise FTLabError(
                f"data max_prompt_length must be at least 1 and below max_length={self.max_length} "
                f"(room must be left for the answers), got {self.max_prompt_length}"
            )

    # --- rows to messages (what a dataset layout overrides)
    def fields(self) -> list[str]:
        """The columns every file must have."""
        return [self.prompt_field, self.chosen_field, self.rejected_field]

    def pair(self, row: dict[str, Any], where: str) -> tuple[Messages, str, str]:
        """The prompt's messages and the texts of the chosen and rejected answers."""
        prompt = field(row, self.prompt_field, where)
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = message_list(prompt, where, self.prompt_field)
        chosen = answer_text(field(row, self.chosen_field, where), where, self.chosen_field)
        rejected = answer_text(field(row, self.rejected_field, where), where, self.rejected_field)
        return self.with_system(messages), chosen, rejected

    def with_system(self, messages: Messages) -> Messages:
        if self.system_prompt and not (messages and messages[0]["role"] == "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    # --- messages to tokens
    def tokens(self, prompt: Messages, answer: str, where: str) -> tuple[list[int], list[int], list[int]]:
        """Prompt ids, answer ids and answer labels; only the final assistant turn carries labels."""
        segments = render_segments(self.tokenizer, [*prompt, {"role": "assistant", "content": answer}], where)
        last = max(i for i, (_, loss) in enumerate(segments) if loss)
        ids, labels = tokenize_segments(
            self.tokenizer, [(text, loss and i == last) for i, (text, loss) in enumerate(segments)]
        )
        # Each segment is tokenized on its own, so the answer starts exactly at its first label.
        start = next(i for i, label in enumerate(labels) if label != IGNORE)
        return ids[:start], ids[start:], labels[start:]

    def encode(self, prompt: Messages, chosen: str, rejected: str, row: int, where: str) -> PairExample:
        prompt_ids, chosen_ids, chosen_labels = self.tokens(prompt, chosen, where)
        _, rejected_ids, rejected_labels = self.tokens(prompt, rejected, where)  # same prompt tokens
        if len(prompt_ids) > self.max_prompt_length:
            bos = self.tokenizer.bos_token_id
            head = prompt_ids[:1] if bos is not None and prompt_ids[0] == bos else []
            keep = self.max_prompt_length - len(head)
            prompt_ids = head + prompt_ids[len(prompt_ids) - keep :]  # the prompt's end: the question asked
            self.count("truncated_prompt")
        room = self.max_length - len(prompt_ids)  # >= max_length - max_prompt_length >= 1
        if len(chosen_ids) > room or len(rejected_ids) > room:
            chosen_ids, chosen_labels = chosen_ids[:room], chosen_labels[:room]
            rejected_ids, rejected_labels = rejected_ids[:room], rejected_labels[:room]
            self.count("truncated_answer")
        return PairExample(prompt_ids, chosen_ids, chosen_labels, rejected_ids, rejected_labels, row=row)

    def build(self, rows: Dataset, source: str) -> list[PairExample]:
        require_columns(rows, source, self.fields())
        before = dict(self.stats)
        first: dict[str, int] = {}  # first row of each kind of drop, for the warnings
        examples: list[PairExample] = []
        for i, row in enumerate(rows):
            where = f"data file {source} row {i}"
            prompt, chosen, rejected = self.pair(row, where)
            self.count("rows")
            if not chosen.strip() or not rejected.strip():
                reason = "dropped_empty_answer"
            elif chosen.strip() == rejected.strip():
                reason = "dropped_identical"
            else:
                examples.append(self.encode(prompt, chosen, rejected, i, where))
                continue
            self.count(reason)
            first.setdefault(reason, i)
        self.report(source, before, first)
        return examples

    def report(self, source: str, before: dict[str, int], first: dict[str, int]) -> None:
        """Warn about what this file lost: drops (with the first row) and cuts."""
        new = {k: v - before.get(k, 0) for k, v in self.stats.items()}
        what = {"dropped_empty_answer": "an empty chosen or rejected answer", "dropped_identical": "identical answers"}
        for key, row in first.items():
            log.warning("%s: dropped %d pairs with %s (first: row %d)", source, new[key], what[key], row)
        if new.get("truncated_prompt"):
            log.warning(
                "%s: cut %d prompts from the left to max_prompt_length=%d",
                source,
                new["truncated_prompt"],
                self.max_prompt_length,
            )
        if new.get("truncated_answer"):
            log.warning(
                "%s: cut the answers of %d pairs from the right to max_length=%d",
                source,
                new["truncated_answer"],
                self.max_length,
            )

    # --- examples to batches
    def collate(self, examples: list[PairExample]) -> PreferenceBatch:
        halves = [(ex.prompt_ids, ex.chosen_ids, ex.chosen_labels) for ex in examples]
        halves += [(ex.prompt_ids, ex.rejected_ids, ex.rejected_labels) for ex in examples]
        width = self.batch_width(max(len(prompt) + len(answer) for prompt, answer, _ in halves))  # both halves
        ids, labels, mask = padded_rows(halves, width, self.tokenizer.pad_token_id)
        return PreferenceBatch(
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            index=torch.tensor([ex.index for ex in examples], dtype=torch.long),
            num_tokens=int(mask.sum()),
        )
