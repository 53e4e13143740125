"""SFT data: instruction rows or chat rows, rendered with the chat template, loss on answers only.

Truncation keeps the start of a row (the prompt) and cuts the answer from the right; a row whose
prompt leaves no answer token within `max_length` is dropped. Both are counted and reported.
Packing concatenates whole examples into rows of `max_length` with position ids that restart per
example; transformers then masks attention block-diagonally, so packed examples stay independent.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import ClassVar

import torch
from datasets import Dataset

from ftlab.batches import SFTBatch
from ftlab.data.base import FineTuneDataModule
from ftlab.data.chat import IGNORE, chat_messages, instruction_messages, render_segments, tokenize_segments
from ftlab.errors import FTLabError

log = logging.getLogger("ftlab")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None


class SFTDataModule(FineTuneDataModule):
    """Instruction or chat data for supervised fine-tuning.

    Args:
        instruction_field: Column holding the instruction.
        input_field: Optional column with extra input, appended to the instruction after a blank line.
        output_field: Column holding the answer (e.g. `response` for GPTeacher).
        messages_field: Column holding chat messages; when present, rows are read as chats.
        system_prompt: A system message put before every instruction row.
        loss_on_prompt: Also train on prompt tokens (plain language modelling over the whole text).
        packing: Concatenate examples into rows of max_length (no padding waste).
        **kwargs: See FineTuneDataModule.
    """

    batch_type: ClassVar[type] = SFTBatch

    def __init__(
        self,
        *args,
        instruction_field: str = "instruction",
        input_field: str | None = "input",
        output_field: str = "output",
        messages_field: str = "messages",
        system_prompt: str | None = None,
        loss_on_prompt: bool = False,
        packing: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.instruction_field = instruction_field
        self.input_field = input_field
        self.output_field = output_field
        self.messages_field = messages_field
        self.system_prompt = system_prompt
        self.loss_on_prompt = loss_on_prompt
        self.packing = packing

    def build(self, rows: Dataset, source: str) -> list[Example]:
        chat = self.messages_field in rows.column_names
        if not chat:
            for key in (self.instruction_field, self.output_field):
                if key not in rows.column_names:
                    raise FTLabError(
                        f"data file {source} has no '{key}' column (columns: {', '.join(rows.column_names)}); "
                        "set the datamodule's *_field options to map them"
                    )
        examples: list[Example] = []
        first_dropped: int | None = None
        no_answer: int | None = None
        for i, row in enumerate(rows):
            where = f"data file {source} row {i}"
            if chat:
                messages = chat_messages(row, where, self.messages_field)
            else:
                messages = instruction_messages(
                    row,
                    where,
                    self.instruction_field,
                    self.input_field,
                    self.output_field,
                    self.system_prompt,
                )
                if messages is None:
                    self.count("dropped_empty_answer")
                    continue
            ids, labels = tokenize_segments(
                self.tokenizer,
                render_segments(self.tokenizer, messages, where),
                loss_on_prompt=self.loss_on_prompt,
            )
            self.count("rows")
            if all(label == IGNORE for label in labels[1:]):  # the template rendered no answer token to learn
                self.count("dropped_no_answer_tokens")
                no_answer = i if no_answer is None else no_answer
                continue
            if len(ids) > self.max_length:
                ids, labels = ids[: self.max_length], labels[: self.max_length]
                if all(label == IGNORE for label in labels[1:]):
                    self.count("dropped_prompt_too_long")
                    first_dropped = i if first_dropped is None else first_dropped
                    continue
                self.count("truncated")
            examples.append(Example(ids, labels))
        if first_dropped is not None:
            log.warning(
                "%s: dropped %d rows whose prompt alone fills max_length=%d (first: row %d)",
                source,
                self.stats["dropped_prompt_too_long"],
                self.max_length,
                first_dropped,
            )
        if no_answer is not None:
            reason = (
                f"{source}: the chat template of tokenizer {getattr(self.tokenizer, 'name_or_path', '')} rendered no "
                f"answer token to train on in {self.stats['dropped_no_answer_tokens']} rows (first: row {no_answer}); "
                "check that it renders assistant turns (a template for generation alone drops them)"
            )
            if not examples:
                raise FTLabError(reason)
            log.warning("%s; those rows are dropped", reason)
        if self.stats.get("truncated"):
            log.warning("%s: truncated %d rows to max_length=%d", source, self.stats["truncated"], self.max_length)
        return examples

    def finalize(self, examples: list[Example], train: bool) -> list[Example]:
        if not self.packing or not examples:
            return examples
        order = list(range(len(examples)))
        random.Random(self.seed).shuffle(order)
        packed: list[Example] = []
        current = Example([], [], [])
        for i in order:
            ex = examples[i]
            if current.input_ids and len(current.input_ids) + len(ex.input_ids) > self.max_length:
                packed.append(current)
                current = Example([], [], [])
            current.input_ids += ex.input_ids
            current.labels += [IGNORE, *ex.labels[1:]]  # never predict across an example boundary
            current.position_ids += list(range(len(ex.input_ids)))
        packed.append(current)
        self.count("packed_rows_train" if train else "packed_rows_val", len(packed))
        return packed

    def collate(self, examples: list[Example]) -> SFTBatch:
        width = self.batch_width(max(len(ex.input_ids) for ex in examples))
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(examples), width), pad, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        positions = torch.zeros((len(examples), width), dtype=torch.long) if self.packing else None
        for row, ex in enumerate(examples):
            n = len(ex.input_ids)
            ids[row, :n] = torch.tensor(ex.input_ids)
            labels[row, :n] = torch.tensor(ex.labels)
            mask[row, :n] = 1
            if positions is not None:
                positions[row, :n] = torch.tensor(ex.position_ids)
                positions[row, n:] = torch.arange(width - n)  # padding is a segment of its own
        return SFTBatch(
            input_ids=ids,
            labels=labels,
            attention_mask=None if self.packing else mask,
            position_ids=positions,
            num_tokens=int(mask.sum()),
            num_loss_tokens=int((labels != IGNORE).sum()),
        )
