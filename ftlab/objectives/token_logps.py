"""Log-probabilities of labelled tokens, computing the output head only where a label is predicted.

Every objective that scores tokens (SFT, DPO, GRPO, PPO) needs log p(token) at some positions only:
the answer, or the completion. The head (hidden → vocabulary) and the log-softmax are the biggest
per-position costs after the blocks, so the forward asks the model for logits of the last `keep`
positions only (`logits_to_keep`, from the first position that predicts a label), and the
log-softmax runs on the labelled rows alone.
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE = -100


def first_predicting_position(labels: torch.Tensor) -> int:
    """The first position t whose logits predict a label (labels[:, t + 1] != -100), over the batch."""
    labelled = (labels[:, 1:] != IGNORE).any(0)
    return int(labelled.float().argmax()) if bool(labelled.any()) else labels.shape[1] - 1


def labelled_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, K, V], labels [N, K]) for the window of the last K positions that holds every label.

    Within the window, logits at position i predict labels at i + 1, as over the full sequence."""
    width = input_ids.shape[1]
    start = first_predicting_position(labels)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=width - start,
        **kwargs,
    )
    return out.logits[:, -(width - start) :], labels[:, start:]


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of each labelled next token [M], its row [M]); logits [N, T, V] predict labels [N, T] shifted by one."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    picked = logits[:, :-1][mask].float()  # [M, V]: only the rows that carry a label
    logps = picked.gather(-1, targets[mask][:, None]).squeeze(-1) - torch.logsumexp(picked, dim=-1)
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)[mask]
    return logps, rows


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_t log p(labels[t+1] | ≤ t) over the labelled tokens of each row: [N, T, V], [N, T] -> [N]."""
    logps, rows = token_logps(logits, labels)
    return torch.zeros(labels.shape[0], device=logps.device, dtype=logps.dtype).index_add(0, rows, logps)


def masked_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood over labelled tokens, and their count."""
    logps, _ = token_logps(logits, labels)
    return -logps.sum(), torch.tensor(logps.numel(), device=logps.device)
