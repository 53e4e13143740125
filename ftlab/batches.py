"""Batch types: what datamodules yield and objectives consume.

A datamodule declares `batch_type`, an objective declares the `batch_type` it consumes; the module
checks that they agree before the model loads. Lightning moves these dataclasses to the device
field by field (tensors move, ints stay).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SFTBatch:
    """Token sequences with a loss mask, for SFT and continued pretraining.

    Shapes: all tensors are [B, T]. `labels` holds the target token id where the loss applies and
    -100 elsewhere (prompt tokens, padding); the objective shifts it by one. Packed batches carry
    `position_ids` that restart at 0 for each example and `attention_mask=None`, which makes
    transformers build a block-diagonal causal mask so packed examples do not see each other.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    num_tokens: int = 0
    """Non-padding tokens in the batch (counted on the host at collate time: no device sync)."""
    num_loss_tokens: int = 0
    """Tokens that carry a loss (labels != -100, before the shift)."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class ClassificationBatch:
    """Token sequences with one class label each, for sequence classification.

    Shapes: input_ids, attention_mask (and token_type_ids, for BERT-style text pairs) are [B, T],
    right-padded; labels and index are [B]. `index` is each example's position in its split (train
    or validation), stable across epochs, so an objective can cache per-example features by it.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    token_type_ids: torch.Tensor | None = None
    num_tokens: int = 0
    """Non-padding tokens in the batch (counted on the host at collate time: no device sync)."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class PreferenceBatch:
    """Pairs of answers to the same prompts, chosen and rejected stacked in one batch.

    Shapes: input_ids, attention_mask and labels are [2B, T], right-padded: rows [0, B) hold
    prompt + chosen answer, rows [B, 2B) prompt + rejected answer for the same prompts in the same
    order, so one forward pass serves both. `labels` holds the answer's token ids and -100 on prompt
    and padding. `index` [B] is each pair's position in its split (stable across epochs).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    num_tokens: int = 0
    """Non-padding tokens in the batch, both halves (counted on the host at collate time)."""

    def __len__(self) -> int:
        return int(self.index.shape[0])


@dataclass
class PromptBatch:
    """Prompts to sample answers for, in online RL (GRPO, PPO).

    Shapes: input_ids and attention_mask are [B, P], LEFT-padded, so that generated tokens follow
    every prompt at the same position. `prompts` holds each prompt's text as the model sees it
    (after the chat template), `columns` the other fields of the rows (e.g. `answer` for GSM8K), each a
    list aligned with the batch, for reward functions. `index` [B] is each prompt's position in its split.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    index: torch.Tensor
    prompts: list[str] = field(default_factory=list)
    columns: dict[str, list[Any]] = field(default_factory=dict)
    num_tokens: int = 0
    """Non-padding prompt tokens in the batch (counted on the host at collate time)."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class FeedbackBatch:
    """Unpaired feedback: single answers to prompts, each marked desirable or not (KTO).

    Shapes: input_ids, attention_mask and labels are [2B, T], right-padded: rows [0, B) hold prompt + answer,
    rows [B, 2B) prompt i + the answer of example (i + 1) mod B, a mismatched pair for KTO's KL estimate.
    `labels` holds the answer's token ids and -100 on prompt and padding. `desirable` [B] (bool) and `index` [B]
    (position in its split) belong to the first B rows.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    desirable: torch.Tensor
    index: torch.Tensor
    num_tokens: int = 0
    """Non-padding tokens of the first B rows (counted on the host at collate time)."""

    def __len__(self) -> int:
        return int(self.index.shape[0])
