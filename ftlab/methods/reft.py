"""LoReFT: a low-rank intervention on hidden representations, written by hand.

Wu et al. (2024), "ReFT: Representation Finetuning for Language Models": at chosen layers and
token positions the residual stream h (the block's output, (..., d)) is edited in an r-dimensional
subspace, h <- h + Rᵀ(W h + b - R h), with R (r x d) of orthonormal rows, W (r x d) and b (r):
2·r·d + r parameters per intervened layer. The backbone stays frozen.

Why by hand: peft has no ReFT, and the authors' pyreft (0.1.0) pins transformers==4.45.1 and
pulls in pyvene, jupyter, ydata-profiling, gcsfs and a pinned seaborn; it also needs intervention
locations passed with every batch and every `generate` call, which ftlab's batches do not carry.
The method here is a block forward hook and two small linear maps.

How this code differs from the paper and pyreft:
- Positions are read from what the model's forward receives (no prompt boundary is passed):
  `first` = the first k non-pad tokens of each sequence (by position: with packing, of each packed
  example; with a KV cache, only in the pass that holds them), `last` = the last k non-pad tokens
  of a forward pass without a cache. For causal LMs trained with SFT/DPO `first` is what matches
  the paper's "first k prompt tokens" in training and generation alike; `last` lands on the end of
  the answer in training and on the end of the prompt in a generation's prefill, so keep it for
  sequence-level objectives (classification, reward), where one pass reads the whole text.
- W starts as a copy of R and b at zero, so W h + b - R h = 0 and the model equals the backbone at
  step 0 (pyreft draws W at random); both still get gradients from the first step.
- R is `torch.nn.utils.parametrizations.orthogonal` with the Householder map and no
  trivialisation: R is a function of one r x d parameter alone (checkpoints need nothing else) and
  costs O(d·r²) per step, not a d x d matrix exponential. The map reads the sign of that
  parameter's diagonal, which gets no gradient; weight decay would shrink it to 0, so R's group
  has weight_decay 0. No dropout on the intervention, and one intervention per layer shared by
  all chosen positions (pyreft's default also ties first and last positions).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from ftlab.errors import FTLabError
from ftlab.methods.base import Method, set_trainable
from ftlab.methods.bottleneck import hidden_size
from ftlab.models.anatomy import find_blocks


class LoReFTIntervention(nn.Module):
    """h + Rᵀ(W h + b - R h) at the positions set for the current forward pass; h is (B, T, d)."""

    def __init__(self, d: int, r: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.rotate = nn.Linear(d, r, bias=False, device=device, dtype=dtype)  # R: (r, d)
        orthogonal(self.rotate, orthogonal_map="householder", use_trivialization=False)
        self.learned = nn.Linear(d, r, device=device, dtype=dtype)  # W: (r, d), b: (r,)
        with torch.no_grad():  # W = R, b = 0: W h + b - R h = 0, the backbone's output at step 0
            self.learned.weight.copy_(self.rotate.weight)
            self.learned.bias.zero_()
        self.enabled = True
        self.where: torch.Tensor | None = None
        """(B, T) bool: the positions to edit in the current forward pass (set by the model's pre-hook)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        R = self.rotate.weight  # (r, d), R Rᵀ = I
        x = h.to(R.dtype)
        return (x + (self.learned(x) - x @ R.T) @ R).to(h.dtype)  # (..., r) @ (r, d) -> (..., d)

    def hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        """Forward hook of a block: edit its output hidden states at the chosen positions."""
        where = self.where
        if not self.enabled or where is None or not bool(where.any()):
            return output
        h = output[0] if isinstance(output, tuple) else output
        edited = torch.where(where[..., None], self(h), h)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited


def _past_length(past: Any) -> int:
    if past is None:
        return 0
    length = past.get_seq_length() if hasattr(past, "get_seq_length") else 0
    return int(length)


def positions(
    first: int, last: int, width: int, attention_mask: Any, position_ids: Any, past: int, device: torch.device
) -> torch.Tensor:
    """(B or 1, width) bool: the first `first` and last `last` non-pad tokens of each sequence.

    A token's place is counted among non-pad tokens from a 2-D attention mask (left or right
    padding, and a cache's past tokens); without one, from position ids (packed rows restart at 0);
    else from `past`. `last` applies only to a pass without past tokens (see the module docstring).
    """
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        mask = attention_mask.to(device).bool()
        place = (mask.long().cumsum(-1) - 1)[:, -width:]  # (B, width): index among non-pad tokens
        real = mask[:, -width:]
        count = mask.sum(-1, keepdim=True)  # (B, 1)
    elif isinstance(position_ids, torch.Tensor):
        place = position_ids.to(device).reshape(-1, width)
        real = torch.ones_like(place, dtype=torch.bool)
        count = torch.full_like(place[:, :1], width)
    else:
        place = torch.arange(past, past + width, device=device)[None, :]
        real = torch.ones_like(place, dtype=torch.bool)
        count = torch.full_like(place[:, :1], past + width)
    where = place < first
    if last and past == 0:
        where = where | (place >= count - last)
    return where & real


def _locate(
    interventions: tuple[LoReFTIntervention, ...], first: int, last: int, model: nn.Module, args: Any, kwargs: Any
) -> None:
    """Forward pre-hook of the whole model: work out this pass's positions once, for every layer."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    source = ids if ids is not None else kwargs.get("inputs_embeds")
    if source is None:
        where = None
    else:
        where = positions(
            first,
            last,
            source.shape[1],
            kwargs.get("attention_mask"),
            kwargs.get("position_ids"),
            _past_length(kwargs.get("past_key_values")),
            source.device,
        )
    for intervention in interventions:
        intervention.where = where


class LoReFT(Method):
    """LoReFT (Wu et al., 2024): rank-r edits of the residual stream at chosen layers and positions.

    Args:
        r: Rank of the intervention subspace (the paper uses 4 or 8).
        layers: Block indices to intervene at (negative counts from the end); None: every block.
        first: Intervene on the first `first` non-pad tokens of each sequence.
        last: Intervene on the last `last` non-pad tokens of a forward pass without a KV cache
            (sequence-level objectives; see the module docstring); 0 for causal-LM SFT/DPO.
    """

    supports_disable: ClassVar[bool] = True
    supports_fsdp: ClassVar[bool] = False  # parametrized weights and per-pass hook state are not sharding-safe
    supports_packing: ClassVar[bool] = True  # with last=0: position ids restart per packed example
    trains_backbone: ClassVar[bool] = True  # the interventions live in the backbone's blocks

    def __init__(self, r: int = 4, layers: list[int] | None = None, first: int = 8, last: int = 0) -> None:
        if r < 1:
            raise FTLabError(f"LoReFT r must be at least 1, got {r}")
        if first < 0 or last < 0 or first + last == 0:
            raise FTLabError(f"LoReFT needs positions to intervene on: first={first}, last={last}")
        self.r = r
        self.layers = None if layers is None else list(layers)
        self.first = first
        self.last = last
        # the end of a packed row is not the end of its examples
        self.supports_packing = last == 0

    def chosen_blocks(self, blocks: nn.ModuleList) -> list[int]:
        n = len(blocks)
        if self.layers is None:
            return list(range(n))
        bad = [i for i in self.layers if not -n <= i < n]
        if bad:
            raise FTLabError(f"LoReFT layers {bad} are out of range for a model with {n} blocks")
        return sorted({i % n for i in self.layers})

    def apply(self, model: nn.Module) -> nn.Module:
        if any(isinstance(m, LoReFTIntervention) for m in model.modules()):
            return model  # applied already (Lightning may call configure_model again)
        d = hidden_size(model)
        if self.r > d:
            raise FTLabError(f"LoReFT r={self.r} exceeds the hidden size {d}")
        _, blocks = find_blocks(model)
        interventions = []
        for i in self.chosen_blocks(blocks):
            like = next(blocks[i].parameters())  # follow the backbone's device (meta too)
            # QR and Householder products have no half-precision kernels: the interventions keep float32
            dtype = like.dtype if like.dtype == torch.float64 else torch.float32
            intervention = LoReFTIntervention(d, self.r, device=like.device, dtype=dtype)
            blocks[i].add_module("reft", intervention)
            blocks[i].register_forward_hook(intervention.hook)
            interventions.append(intervention)
        model.register_forward_pre_hook(partial(_locate, tuple(interventions), self.first, self.last), with_kwargs=True)
        set_trainable(model, self.chosen(model))
        return model

    def chosen(self, model: nn.Module) -> set[str]:
        return {
            f"{prefix}.{name}"
            for prefix, module in model.named_modules()
            if isinstance(module, LoReFTIntervention)
            for name, _ in module.named_parameters()
        }

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """W and b decay as usual; R's parameter must not (see the module docstring)."""
        params = self.trainable_parameters(model)
        rotate = [p for n, p in params.items() if ".rotate." in n]
        rest = [p for n, p in params.items() if ".rotate." not in n]
        return [
            {"params": rest, "name": "reft"},
            {"params": rotate, "name": "reft_rotation", "weight_decay": 0.0},
        ]

    @contextmanager
    def disabled(self, model: nn.Module) -> Iterator[nn.Module]:
        interventions = [m for m in model.modules() if isinstance(m, LoReFTIntervention)]
        before = [m.enabled for m in interventions]
        for m in interventions:
            m.enabled = False
        try:
            yield model
        finally:
            for m, enabled in zip(interventions, before, strict=True):
                m.enabled = enabled

    def merge(self, model: nn.Module) -> nn.Module:
        raise FTLabError("LoReFT edits chosen token positions, which no backbone weight can express; it cannot merge")
