"""Heads on top of a backbone's hidden states: pooling a sequence to one vector, and a classifier.

`pool` is a pure function of the hidden states and the attention mask. `ClassifierHead` is a linear
layer, or (with `hidden`) the two-layer head of RoBERTa's `RobertaClassificationHead`: dropout,
dense, tanh, dropout, projection. Written here rather than taken from transformers because the
`*ForSequenceClassification` heads are fused to one architecture's pooling; this one sits on any
`AutoModel` and any pooling.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Pooling = Literal["mean", "cls", "last"]


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """One vector per sequence from hidden states [B, T, H] and an attention mask [B, T] -> [B, H].

    mean: the average over positions where mask is 1 (sentence-transformers' mean pooling).
    cls:  position 0 (BERT's [CLS]; right padding assumed).
    last: the last position where mask is 1 (a causal model's summary token); right or left padding.
    """
    if how == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * (positions + 1)).argmax(1)  # +1 so an all-padding row picks position 0
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}; use mean, cls or last")


class ClassifierHead(nn.Module):
    """Logits [B, num_labels] from pooled features [B, in_features].

    Args:
        in_features: Width of the pooled features (the backbone's hidden size).
        num_labels: Number of classes.
        hidden: Width of one hidden layer (tanh); None for a linear head.
        dropout: Dropout on the features (and on the hidden layer).
    """

    def __init__(self, in_features: int, num_labels: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        if hidden is None:
            self.layers = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_labels))
        else:
            self.layers = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(in_features, hidden),
                nn.Tanh(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_labels),
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
