"""Log-probabilities of labelled tokens, computing the output head only where a label is predicted.

Every objective that scores tokens (SFT, DPO, GRPO, PPO) needs log p(token) at some positions only:
the answer, or the completion. The head (hidden → vocabulary) and the log-softmax are the biggest
per-position costs after the blocks, so `labelled_logps` runs the blocks once, gathers the final hidden
states of the M positions that predict a label ([M, H], row by row: no prompt and no padding) and
applies the head there in chunks of rows (`chunked_logps.head_logps`: the float32 [M, V] logits never
exist at once). Its log-probabilities equal those of the full logits up to float rounding (the same
products, summed in another order).

Where the hidden states do not map one-to-one to the head's input (prompt tuning adds virtual tokens, so
there are more hidden states than inputs; a model that scales or soft-caps its logits), the head runs on
the window of the last K positions that holds every label instead (`labelled_logits`, through
`logits_to_keep`). Which path a model takes is decided once per model object, by checking the width of
the final hidden states and the head on them against the logits the model itself returns at the last
position.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ftlab.objectives.chunked_logps import head_logps, picked_logps

IGNORE = -100

_HEAD_ON_HIDDEN: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
"""Per model object: does `head(hidden_states[-1])` give the model's logits? (checked on first use)"""


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
    logps = picked_logps(logits[:, :-1][mask], targets[mask])  # [M, V]: only the rows that carry a label
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)[mask]
    return logps, rows


def _head_on_hidden(model: nn.Module, out: object, width: int) -> bool:
    """Whether the model's head applied to its last hidden state reproduces its own logits (once per model)."""
    known = _HEAD_ON_HIDDEN.get(model)
    if known is not None:
        return known
    hidden = getattr(out, "hidden_states", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    ok = bool(hidden) and head is not None and hidden[-1].shape[1] == width
    if ok:
        with torch.no_grad():
            mine = head(hidden[-1][:, -1]).float()
            theirs = out.logits[:, -1].float()
            ok = mine.shape == theirs.shape and torch.allclose(mine, theirs, rtol=1e-3, atol=1e-4)
    _HEAD_ON_HIDDEN[model] = ok
    return ok


def labelled_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of each labelled next token [M], its row [M]), the head applied at those M positions only."""
    if _HEAD_ON_HIDDEN.get(model) is False:
        return token_logps(*labelled_logits(model, input_ids, labels, attention_mask, position_ids))
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=1,  # the head on one position: what the check below compares against
    )
    if not _head_on_hidden(model, out, input_ids.shape[1]) or out.hidden_states[-1].shape[1] != input_ids.shape[1]:
        return token_logps(*labelled_logits(model, input_ids, labels, attention_mask, position_ids))
    targets = labels[:, 1:]
    mask = targets != IGNORE
    hidden = out.hidden_states[-1][:, :-1][mask]  # [M, H]: the positions that predict a label
    logps = head_logps(model.get_output_embeddings(), hidden, targets[mask])  # chunked: no [M, V] at once
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)[mask]
    return logps, rows


def row_sums(logps: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Σ of the token log-probabilities of each row: [M], [M] -> [n_rows]."""
    return torch.zeros(n_rows, device=logps.device, dtype=logps.dtype).index_add(0, rows, logps)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_t log p(labels[t+1] | ≤ t) over the labelled tokens of each row: [N, T, V], [N, T] -> [N]."""
    logps, rows = token_logps(logits, labels)
    return row_sums(logps, rows, labels.shape[0])


def masked_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood over labelled tokens, and their count."""
    logps, _ = token_logps(logits, labels)
    return -logps.sum(), torch.tensor(logps.numel(), device=logps.device)
