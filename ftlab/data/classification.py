"""Classification data: one text (or a text pair) and one label per row.

Label ids come from named labels (`labels`, or a JSON list in `labels_file`) in id order; without
names they come from the training files: integer labels are used as they are (num_labels is the
largest + 1), string labels are numbered in sorted order, and the mapping is logged. A label that
is not known (a string outside the names, an integer out of range) is an error naming its row.
Texts longer than `max_length` tokens are cut from the right (for pairs, the longer text first) and
counted. `sample` draws a seeded random subset of each training file before tokenizing, for big
files such as SST-2's 67k rows. `shots` keeps N training examples per class (a few-shot budget),
drawn with `seed` after the validation split, so the validation set does not depend on N; a class
with fewer than N examples keeps all of them, and is counted and logged.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from datasets import Dataset

from ftlab.batches import ClassificationBatch
from ftlab.data.base import FineTuneDataModule
from ftlab.data.fields import text_value
from ftlab.data.files import load_rows, require_columns
from ftlab.errors import FTLabError

log = logging.getLogger("ftlab")


@dataclass
class Example:
    input_ids: list[int]
    label: int
    token_type_ids: list[int] | None = None
    index: int = 0
    """Position in its split, set once the split is final (the key of an objective's feature cache)."""


def read_label_names(path: str) -> list[str]:
    """Label names from a JSON file holding a list of strings (e.g. BANKING77's categories.json)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FTLabError(f"labels_file {path} not found")
    try:
        names = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FTLabError(f"labels_file {path} is not valid JSON: {err}") from err
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise FTLabError(f"labels_file {path} must hold a non-empty JSON list of label strings")
    return names


def clean(value: Any) -> Any:
    """A cell as a label or text: None for missing (None, NaN, empty text), ints for integral floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and not value.strip():
        return None
    return value


class ClassificationDataModule(FineTuneDataModule):
    """Text classification data (single texts or text pairs) with integer or named labels.

    Args:
        text_field: Column holding the text.
        text_pair_field: Column holding a second text (e.g. the hypothesis of NLI); optional.
        label_field: Column holding the label: an integer id or a label string.
        labels: Label names in id order; integer labels index into it, string labels must be in it.
        labels_file: A JSON file holding the label names as a list (instead of `labels`).
        sample: Draw this many rows at random (with `seed`) from each training file; None keeps all.
        shots: Keep this many training examples per class, drawn with `seed` (after the validation
            split); None keeps all.
        **kwargs: See FineTuneDataModule.
    """

    batch_type: ClassVar[type] = ClassificationBatch

    def __init__(
        self,
        *args,
        text_field: str = "text",
        text_pair_field: str | None = None,
        label_field: str = "label",
        labels: list[str] | None = None,
        labels_file: str | None = None,
        sample: int | None = None,
        shots: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if labels is not None and labels_file is not None:
            raise FTLabError("set data labels or data labels_file, not both")
        if sample is not None and sample < 1:
            raise FTLabError(f"data sample must be at least 1 row, got {sample}")
        self.text_field = text_field
        self.text_pair_field = text_pair_field
        self.label_field = label_field
        self.labels = labels
        self.labels_file = labels_file
        if shots is not None and shots < 1:
            raise FTLabError(f"data shots must be at least 1 example per class, got {shots}")
        self.sample = sample
        self.shots = shots
        names = list(labels) if labels is not None else read_label_names(labels_file) if labels_file else None
        if names is not None and len(set(names)) != len(names):
            raise FTLabError(f"data labels name a label twice: {sorted({n for n in names if names.count(n) > 1})}")
        self._names = names
        self._ids: dict[str, int] | None = None

    # --- the label space
    @property
    def label_names(self) -> list[str]:
        """Label names in id order (read from the training files' label column if not given)."""
        if self._names is None:
            self._names = self._infer_names()
            log.info("data: label ids from the training files: %s", self.describe_labels())
        return self._names

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def describe_labels(self) -> str:
        return ", ".join(f"{i}={name}" for i, name in enumerate(self.label_names))

    def _infer_names(self) -> list[str]:
        values: set[Any] = set()
        for spec in self.train_specs:
            rows = load_rows(spec)
            self._check_columns(rows, spec)
            values |= {v for v in map(clean, rows[self.label_field]) if v is not None}
        ints = {v for v in values if isinstance(v, int)}
        if ints and len(ints) != len(values):
            raise FTLabError(f"data column '{self.label_field}' mixes integer and string labels; name them in labels")
        if ints and min(ints) < 0:
            raise FTLabError(f"data column '{self.label_field}' holds the negative label {min(ints)}")
        if ints:
            unseen = sorted(set(range(max(ints) + 1)) - ints)
            if unseen:
                log.warning("data: integer label ids %s never occur in the training files", unseen[:10])
            return [str(i) for i in range(max(ints) + 1)]
        if not values:
            raise FTLabError(f"data column '{self.label_field}' holds no label in {', '.join(self.train_specs)}")
        return sorted(values)

    def label_id(self, value: Any, where: str) -> int:
        names = self.label_names
        if self._ids is None:
            self._ids = {name: i for i, name in enumerate(names)}
        if isinstance(value, int) and 0 <= value < len(names):
            return value
        if isinstance(value, str) and value in self._ids:
            return self._ids[value]
        known = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise FTLabError(
            f"{where} has label {value!r}, which is not one of the {len(names)} labels ({known}); "
            "name every label in data labels or labels_file"
        )

    # --- rows to examples
    def _check_columns(self, rows: Dataset, source: str) -> None:
        require_columns(rows, source, [k for k in (self.text_field, self.text_pair_field, self.label_field) if k])

    def build(self, rows: Dataset, source: str) -> list[Example]:
        self._check_columns(rows, source)
        numbers = list(range(len(rows)))  # row numbers in the file, kept through sampling for errors
        if self.sample is not None and source in self.train_specs and len(rows) > self.sample:
            numbers = sorted(random.Random(self.seed).sample(numbers, self.sample))
            self.count("not_sampled", len(rows) - self.sample)
            rows = rows.select(numbers)
        keys = [k for k in (self.text_field, self.text_pair_field) if k is not None]
        columns = {k: [clean(v) for v in rows[k]] for k in [*keys, self.label_field]}
        for key, cells in columns.items():
            missing = next((i for i, v in enumerate(cells) if v is None), None)
            if missing is not None:
                raise FTLabError(f"data file {source} row {numbers[missing]} has no value for '{key}'")
        values = zip(columns[self.label_field], numbers, strict=True)
        labels = [self.label_id(v, f"data file {source} row {n}") for v, n in values]

        def texts_of(key: str) -> list[str]:  # numbers read as text (a CSV cell "1984"); lists and dicts refused
            cells = zip(columns[key], numbers, strict=True)
            return [text_value(t, f"data file {source} row {n}", key, numbers=True) for t, n in cells]

        texts = texts_of(self.text_field)
        pairs = texts_of(self.text_pair_field) if self.text_pair_field else None
        before = self.stats.get("truncated", 0)
        encoded = self.encode(texts, pairs)
        self.count("rows", len(labels))
        if self.stats.get("truncated", 0) > before:
            cut = self.stats["truncated"] - before
            log.warning("%s: truncated %d rows to max_length=%d", source, cut, self.max_length)
        types = encoded.get("token_type_ids") if pairs is not None else None
        return [
            Example(ids, label, types[i] if types is not None else None)
            for i, (ids, label) in enumerate(zip(encoded["input_ids"], labels, strict=True))
        ]

    def finalize(self, examples: list[Example], train: bool) -> list[Example]:
        """The training split cut to `shots` examples per class (seeded), in their original order."""
        if not train or self.shots is None:
            return examples
        by_class: dict[int, list[int]] = {}
        for i, ex in enumerate(examples):
            by_class.setdefault(ex.label, []).append(i)
        rng = random.Random(self.seed)
        kept: list[int] = []
        short = {}
        for label in sorted(by_class):
            members = by_class[label]
            if len(members) < self.shots:
                short[self.label_names[label]] = len(members)
            kept += rng.sample(members, min(self.shots, len(members)))
        if short:
            self.count("shots_short_classes", len(short))
            log.warning("data: %d classes have fewer than %d training examples: %s", len(short), self.shots, short)
        self.count("not_in_shots", len(examples) - len(kept))
        return [examples[i] for i in sorted(kept)]

    def encode(self, texts: list[str], pairs: list[str] | None) -> dict[str, list[list[int]]]:
        """Tokenize in one batch; rows longer than max_length are cut and counted."""
        # Encoding to max_length + 1 shows which rows are too long without tokenizing twice in general.
        encoded = dict(self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length + 1))
        long = [i for i, ids in enumerate(encoded["input_ids"]) if len(ids) > self.max_length]
        if long:
            self.count("truncated", len(long))
            cut = self.tokenizer(
                [texts[i] for i in long],
                [pairs[i] for i in long] if pairs is not None else None,
                truncation=True,
                max_length=self.max_length,
            )
            for key in encoded:
                for j, i in enumerate(long):
                    encoded[key][i] = cut[key][j]
        return encoded

    def collate(self, examples: list[Example]) -> ClassificationBatch:
        width = max(len(ex.input_ids) for ex in examples)
        ids = torch.full((len(examples), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        pairs = examples[0].token_type_ids is not None
        types = torch.zeros((len(examples), width), dtype=torch.long) if pairs else None
        for row, ex in enumerate(examples):
            n = len(ex.input_ids)
            ids[row, :n] = torch.tensor(ex.input_ids)
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = torch.tensor(ex.token_type_ids)
        return ClassificationBatch(
            input_ids=ids,
            attention_mask=mask,
            labels=torch.tensor([ex.label for ex in examples], dtype=torch.long),
            index=torch.tensor([ex.index for ex in examples], dtype=torch.long),
            token_type_ids=types,
            num_tokens=int(mask.sum()),
        )
