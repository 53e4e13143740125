"""Variants of critic-free online RL, as pure functions on tensors (hand-checked, and against TRL, in the tests).

Shapes as in `rl_math`: N sequences (B prompts × G samples, samples of a prompt adjacent), C completion
tokens, `mask` [N, C] 1 on completion tokens up to and including the first EOS.

- Global-token normalisation (DAPO, Yu et al. 2025): a token-level loss divided by the completion tokens
  of every data-parallel rank, not this rank's alone.
- Baselines: RLOO's leave-one-out mean (Ahmadian et al. 2024, "Back to Basics"), REINFORCE++'s
  batch-normalised advantages (Hu 2025).
- GSPO's sequence-level importance ratio (Zheng et al. 2025), and RLOO's whole-sequence ratio and KL
  penalty in the reward (Ahmadian et al. 2024: the completion is one action).
- DAPO's dynamic sampling (groups whose rewards are all equal carry no signal) and its soft overlong
  punishment.
"""

from __future__ import annotations

from typing import Literal

import torch

from ftlab.objectives.base import StepContext
from ftlab.objectives.rl_math import group_advantages

Advantage = Literal["group", "rloo", "reinforce_pp"]
"""Which baseline turns rewards into advantages; see `advantages`."""


def global_token_divisor(mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """The divisor of a token-level loss normalised over every data-parallel rank: T / R, with T the completion
    tokens summed over the R ranks. Each rank's loss Σ_rank ℓ / (T / R), averaged over ranks by DDP's gradient
    mean, has the gradient of Σ_all ℓ / T: the loss of one process holding every rank's rows. Equal to this
    rank's token count in one process."""
    return ctx.sum_over_ranks(mask.sum().to(torch.float64)).to(mask.dtype) / ctx.ranks


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): each reward minus the mean of the other G − 1 rewards of its group,
    A_i = r_i − (Σ_j r_j − r_i) / (G − 1) = G/(G − 1) · (r_i − mean). [N] -> [N]."""
    groups = rewards.view(-1, group_size)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)


def reinforce_pp_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++-baseline (Hu 2025, OpenRLHF's `reinforce_baseline`): each reward minus its group's mean,
    then normalised over the whole batch, (x − mean_batch) / (std_batch + eps) with the sample std.
    With group_size 1 no group mean is taken (REINFORCE++ on outcome rewards). [N] -> [N]."""
    groups = rewards.view(-1, group_size)
    centred = (groups - groups.mean(dim=1, keepdim=True)).reshape(-1) if group_size > 1 else rewards
    if centred.numel() < 2:
        return centred - centred.mean()
    return (centred - centred.mean()) / (centred.std() + eps)


def advantages(rewards: torch.Tensor, group_size: int, kind: Advantage, scale: bool = True) -> torch.Tensor:
    """Advantages by baseline: `group` (GRPO's group mean, divided by the group std when `scale`), `rloo` or
    `reinforce_pp` (see those functions). [N] -> [N]."""
    if kind == "group":
        return group_advantages(rewards, group_size, scale=scale)
    if kind == "rloo":
        return rloo_advantages(rewards, group_size)
    if kind == "reinforce_pp":
        return reinforce_pp_advantages(rewards, group_size)
    raise ValueError(f"unknown advantage {kind!r}: use group, rloo or reinforce_pp")


def sequence_log_ratio(
    logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor, normalise: bool = True
) -> torch.Tensor:
    """A sequence's log-ratio broadcast to every token of it: [N, C] -> [N, C]; fed to the clipped surrogate in
    place of the per-token log-ratio. `normalise`: GSPO (Zheng et al. 2025), (1/|y|) Σ_t (log π − log π_old), whose
    exp is s_i = (π(y|x) / π_old(y|x))^{1/|y|}; not: RLOO (Ahmadian et al. 2024; TRL's RLOO), Σ_t (log π −
    log π_old), the ratio of the whole completion's probabilities."""
    per_sequence = ((logps - old_logps) * mask).sum(-1)
    if normalise:
        per_sequence = per_sequence / mask.sum(-1).clamp(min=1)
    return per_sequence[:, None].expand_as(logps)


def sequence_kl(sampling_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RLOO's KL penalty, taken from the reward (Ahmadian et al. 2024; TRL's RLOO): the k1 estimate summed over
    the completion, Σ_t (log π_old − log π_ref), with π_old the sampling policy: [N, C] -> [N]. Unlike GRPO's k3
    term in the loss, it can be negative."""
    return ((sampling_logps - ref_logps) * mask).sum(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """DAPO's dynamic sampling: which sequences belong to a group whose rewards are not all equal ([N] bool).
    A group with equal rewards has zero advantage everywhere, so it adds no gradient, only noise to the
    normaliser; DAPO drops such groups (and samples again to refill the batch, which ftlab does not)."""
    groups = rewards.view(-1, group_size)
    varied = (groups != groups[:, :1]).any(dim=1)
    return varied[:, None].expand_as(groups).reshape(-1)


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the reward of a completion of |y|
    tokens: 0 when |y| ≤ L_max − L_cache, (L_max − L_cache − |y|) / L_cache up to L_max, −1 beyond, with
    L_max = max_length and L_cache = buffer. [N] -> [N]."""
    lengths = lengths.to(torch.float32)
    free = max_length - buffer
    ramp = (free - lengths) / max(buffer, 1)
    return torch.where(lengths <= free, torch.zeros_like(lengths), torch.where(lengths <= max_length, ramp, -1.0))
