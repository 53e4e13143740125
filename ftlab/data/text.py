"""Raw text for continued pretraining: every token labelled, the token stream cut into rows of max_length.

The files are read whole (plain text: `.txt`, `.raw`, any other suffix, optionally `.gz`; or rows of
json/jsonl/csv/parquet with a text column, one document per row), tokenized without special tokens,
joined into one stream with each document between BOS and EOS (those the tokenizer has; BOS as
`PromptDataModule`'s prompts and the chat template begin, so the same convention holds when a model
trained here on raw text is then prompted or fine-tuned), and chunked into rows of exactly
`max_length` tokens (the last, shorter row is kept). Labels equal the input ids everywhere, so the
SFT objective on these batches is plain language modelling (next-token NLL over every token); the
objective shifts the labels, so each row predicts its own `max_length - 1` next tokens.

Chunking keeps no overlap between rows (a row's first token has no context from the previous row),
as in GPT-2's and Hugging Face's `run_clm` grouping; it is the cheap and standard choice for training
and for a perplexity probe (a strided evaluation would give slightly lower perplexities).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from ftlab.batches import SFTBatch
from ftlab.data.base import FineTuneDataModule
from ftlab.data.files import _BUILDERS, load_rows
from ftlab.errors import FTLabError

log = logging.getLogger("ftlab")
IGNORE = -100


@dataclass
class Chunk:
    """One row of `max_length` (or fewer, the last) consecutive tokens of the stream."""

    input_ids: list[int]


def read_documents(spec: str, text_field: str = "text") -> list[str]:
    """The documents of a text source: a plain text file is one document, a table gives one per row."""
    path = Path(spec).expanduser()
    suffixes = [s for s in path.suffixes if s != ".gz"]
    if suffixes and suffixes[-1] in _BUILDERS:
        rows = load_rows(spec)
        if text_field not in rows.column_names:
            raise FTLabError(
                f"data file {spec} has no '{text_field}' column (columns: {', '.join(rows.column_names)}); "
                "set text_field"
            )
        return [str(t) for t in rows[text_field] if t]
    if not path.is_file():
        raise FTLabError(f"text file {spec} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read().replace("\r\n", "\n")
    if not text.strip():
        raise FTLabError(f"text file {spec} is empty")
    return [text]


def tokenize_stream(tokenizer: PreTrainedTokenizerBase, documents: list[str]) -> list[int]:
    """Token ids of the documents, each preceded by BOS and followed by EOS (those the tokenizer has).

    A long document is tokenized paragraph by paragraph (split on blank lines, the newlines kept),
    which gives the same ids as one call on a byte-level BPE up to the merges across the split."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids: list[int] = []
    for doc in documents:
        if bos is not None:
            ids.append(bos)
        parts = [p + "\n\n" for p in doc.split("\n\n")]
        parts[-1] = parts[-1][:-2]
        parts = [p for p in parts if p]
        for row in tokenizer(parts, add_special_tokens=False)["input_ids"]:
            ids += row
        if eos is not None:
            ids.append(eos)
    return ids


def chunk(ids: list[int], max_length: int) -> list[Chunk]:
    """Rows of `max_length` consecutive ids; the shorter tail is kept when it predicts a token (>= 2)."""
    rows = [Chunk(ids[i : i + max_length]) for i in range(0, len(ids), max_length)]
    return [r for r in rows if len(r.input_ids) >= 2]


def collate_chunks(chunks: list[Chunk], pad_id: int) -> SFTBatch:
    """Right-padded SFTBatch with every real token labelled (padding is -100)."""
    width = max(len(c.input_ids) for c in chunks)
    ids = torch.full((len(chunks), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunks), width), dtype=torch.long)
    for row, c in enumerate(chunks):
        ids[row, : len(c.input_ids)] = torch.tensor(c.input_ids)
        mask[row, : len(c.input_ids)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE)
    return SFTBatch(
        input_ids=ids,
        labels=labels,
        attention_mask=mask,
        num_tokens=int(mask.sum()),
        num_loss_tokens=int(mask.sum()),
    )


def text_chunks(
    tokenizer: PreTrainedTokenizerBase, specs: list[str], max_length: int, text_field: str = "text"
) -> list[Chunk]:
    """Every source read, tokenized into one stream and chunked (used by the datamodule and the probes)."""
    documents = [doc for spec in specs for doc in read_documents(spec, text_field)]
    return chunk(tokenize_stream(tokenizer, documents), max_length)


class TextDataModule(FineTuneDataModule):
    """Raw text for continued pretraining (SFT objective, loss on every token).

    `limit` counts rows (chunks of max_length tokens) of the training split. `holdout_tail` keeps the
    end of the text for validation, contiguous (a share of the rows, taken from the end of the stream:
    whole articles of WikiText rather than chunks scattered between training chunks, as
    `val_fraction` would pick them).

    Args:
        text_field: Column holding the text when a source is a table (json, jsonl, csv, parquet).
        holdout_tail: Share of the rows, from the end of the training text, held out for validation
            when `val` is not given; a selection split (`selection_fraction`) is drawn from the rows before it.
        **kwargs: See FineTuneDataModule (`train`/`val` name text files).
    """

    batch_type: ClassVar[type] = SFTBatch

    def __init__(self, *args, text_field: str = "text", holdout_tail: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= holdout_tail < 1.0:
            raise FTLabError(f"data holdout_tail must be in [0, 1), got {holdout_tail}")
        self.text_field = text_field
        self.holdout_tail = holdout_tail

    def setup(self, stage: str) -> None:
        if self.train_set is not None or not self.holdout_tail or self.val_specs:
            super().setup(stage)
            return
        rows = self._read(self.train_specs, None)
        n_val = max(1, round(len(rows) * self.holdout_tail))
        if n_val >= len(rows):
            raise FTLabError(f"data holdout_tail={self.holdout_tail} leaves no training row of {len(rows)}")
        train, selection = self._split_selection(rows[:-n_val])  # the tail stays put with or without it
        self.train_set = train[: self.limit] if self.limit is not None else train
        self.val_set = rows[-n_val:]
        if selection:
            self.selection_set = selection
            self.stats["selection_examples"] = len(selection)
            if self.evaluate_on == "selection":
                self.val_set = selection
        self.stats["train_examples"] = len(self.train_set)
        self.stats["val_examples"] = len(self.val_set)

    def _read(self, specs: list[str], limit: int | None) -> list[Chunk]:
        rows = text_chunks(self.tokenizer, specs, self.max_length, self.text_field)
        if not rows:
            raise FTLabError(f"text {', '.join(specs)} gives no row of 2 tokens or more")
        self.count("tokens", sum(len(r.input_ids) for r in rows))
        return rows[:limit] if limit is not None else rows

    def collate(self, examples: list[Chunk]) -> SFTBatch:
        return collate_chunks(examples, self.tokenizer.pad_token_id)


def examples_of(
    source: str | FineTuneDataModule, tokenizer: PreTrainedTokenizerBase, max_length: int, split: str = "train"
) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """(examples, collate) of data a callback reads beside the run's own: a text file chunked to
    max_length, or a datamodule's `split` ("train", or "val" falling back to train when it has none).

    A datamodule that names no tokenizer gets the run's, so its ids are the model's."""
    if isinstance(source, str):
        return text_chunks(tokenizer, [source], max_length), partial(collate_chunks, pad_id=tokenizer.pad_token_id)
    if source._tokenizer is None and not source.tokenizer_name:
        source.tokenizer = tokenizer
    source.setup("fit")
    examples = source.val_set if split == "val" and source.val_set else source.train_set
    return list(examples), source.collate
