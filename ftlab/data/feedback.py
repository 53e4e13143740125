"""Unpaired feedback data: a prompt, one answer and whether the answer is desirable, for KTO.

Convention (TRL's unpaired preference format): a row holds `prompt`, `completion` and `label`, the label a
boolean (true: desirable). Prompts and answers take the same forms as in preference data (a string, or chat
messages; an answer may be a list holding one assistant message) and are tokenized the same way
(`ftlab.data.preference`): the answer's text and its end-of-turn marker carry the labels, the prompt is cut
from the left to `max_prompt_length`, the answer from the right to fit `max_length`. Rows with an empty
answer are dropped (counted in `stats` as dropped_empty_answer). A label that is not a boolean (true/false,
or 0/1) is an error naming the file, row and value.

Batches also carry, for each example i, its prompt with the answer of example (i + 1) mod B: KTO's estimate
of the KL term comes from such mismatched pairs (see `FeedbackBatch`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from datasets import Dataset

from ftlab.batches import FeedbackBatch
from ftlab.data.files import require_columns
from ftlab.data.preference import PreferenceDataModule, answer_text, field, message_list, padded_rows
from ftlab.errors import FTLabError

log = logging.getLogger("ftlab")


@dataclass
class FeedbackExample:
    """One tokenized answer: its prompt, the answer with its labels (-100 where no loss), the feedback."""

    prompt_ids: list[int]
    answer_ids: list[int]
    answer_labels: list[int]
    desirable: bool
    row: int = 0
    index: int = 0


def desirable_label(value: Any, where: str, key: str) -> bool:
    """A row's feedback: a boolean, or the integers 0 and 1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise FTLabError(f"{where} '{key}' must be true or false (desirable or not), got {value!r}")


class FeedbackDataModule(PreferenceDataModule):
    """Unpaired feedback (prompt, answer, desirable or not) for KTO.

    Args:
        prompt_field: Column holding the prompt: a string, or a list of chat messages.
        completion_field: Column holding the answer: a string, or a list with one assistant message.
        label_field: Column holding the feedback: true (desirable) or false.
        **kwargs: See PreferenceDataModule (system_prompt, max_prompt_length) and FineTuneDataModule.
    """

    batch_type: ClassVar[type] = FeedbackBatch

    def __init__(self, *args, completion_field: str = "completion", label_field: str = "label", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.completion_field = completion_field
        self.label_field = label_field

    def fields(self) -> list[str]:
        return [self.prompt_field, self.completion_field, self.label_field]

    def build(self, rows: Dataset, source: str) -> list[FeedbackExample]:
        require_columns(rows, source, self.fields())
        before = dict(self.stats)
        first: dict[str, int] = {}
        examples: list[FeedbackExample] = []
        for i, row in enumerate(rows):
            where = f"data file {source} row {i}"
            prompt = field(row, self.prompt_field, where)
            messages = (
                [{"role": "user", "content": prompt}]
                if isinstance(prompt, str)
                else message_list(prompt, where, self.prompt_field)
            )
            answer = answer_text(field(row, self.completion_field, where), where, self.completion_field)
            desirable = desirable_label(field(row, self.label_field, where), where, self.label_field)
            self.count("rows")
            if not answer.strip():
                self.count("dropped_empty_answer")
                first.setdefault("dropped_empty_answer", i)
                continue
            examples.append(self.encode_one(self.with_system(messages), answer, desirable, i, where))
        self.report(source, before, first)
        return examples

    def encode_one(self, prompt: list, answer: str, desirable: bool, row: int, where: str) -> FeedbackExample:
        prompt_ids, answer_ids, answer_labels = self.tokens(prompt, answer, where)
        if len(prompt_ids) > self.max_prompt_length:
            bos = self.tokenizer.bos_token_id
            head = prompt_ids[:1] if bos is not None and prompt_ids[0] == bos else []
            prompt_ids = head + prompt_ids[len(prompt_ids) - (self.max_prompt_length - len(head)) :]
            self.count("truncated_prompt")
        room = self.max_length - len(prompt_ids)
        if len(answer_ids) > room:
            answer_ids, answer_labels = answer_ids[:room], answer_labels[:room]
            self.count("truncated_answer")
        return FeedbackExample(prompt_ids, answer_ids, answer_labels, desirable, row=row)

    def collate(self, examples: list[FeedbackExample]) -> FeedbackBatch:
        n = len(examples)
        rows = [(ex.prompt_ids, ex.answer_ids, ex.answer_labels) for ex in examples]
        for i, ex in enumerate(examples):  # prompt i with the answer of i + 1, cut to max_length
            other = examples[(i + 1) % n]
            room = self.max_length - len(ex.prompt_ids)
            rows.append((ex.prompt_ids, other.answer_ids[:room], other.answer_labels[:room]))
        width = self.batch_width(max(len(p) + len(a) for p, a, _ in rows))
        ids, labels, mask = padded_rows(rows, width, self.tokenizer.pad_token_id)
        return FeedbackBatch(
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            desirable=torch.tensor([ex.desirable for ex in examples], dtype=torch.bool),
            index=torch.tensor([ex.index for ex in examples], dtype=torch.long),
            num_tokens=int(mask[:n].sum()),
        )
