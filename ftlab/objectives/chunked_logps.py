"""The output head and log-softmax in chunks of rows, so the float32 [M, V] logits never exist at once.

With a large vocabulary the logits of the labelled positions dominate a step's memory: M tokens × V
vocabulary × 4 bytes (Llama-3's V = 128,256 and M = 16,384 tokens is 8 GiB), and the graph keeps them
for the backward pass. `head_logps` applies the head and the log-softmax to `CHUNK_ROWS` rows at a time;
under autograd each chunk is checkpointed (its logits are recomputed in the backward pass), so what the
graph keeps is the hidden states and one chunk's logits at a time. The result equals the unchunked one
up to float rounding (each row's products and log-softmax are the same; only the row order of the matmul
differs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

CHUNK_ROWS = 1024
"""Labelled positions per chunk: 1024 × V float32 logits (0.5 GiB at V = 128k) are live at a time."""


def picked_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row: [M, V], [M] -> [M], in float32 at least (one fused log-softmax + NLL
    kernel forward and backward, rather than logsumexp, gather and their backward as separate ops)."""
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def _chunk(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return picked_logps(head(hidden), targets)


def head_logps(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None
) -> torch.Tensor:
    """log p(target) of each row of `hidden` [M, H] under `head` (H -> V): [M], `chunk_rows` rows at a time
    (default `CHUNK_ROWS`)."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    if hidden.shape[0] <= chunk_rows:
        return _chunk(head, hidden, targets)
    parts = []
    for rows, picked in zip(hidden.split(chunk_rows), targets.split(chunk_rows), strict=True):
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk, head, rows, picked, use_reentrant=False))
        else:
            parts.append(_chunk(head, rows, picked))
    return torch.cat(parts)
