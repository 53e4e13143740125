"""Bottleneck adapters, written by hand because peft has none: the module, where it goes, the shared method.

Houlsby et al. (2019), "Parameter-Efficient Transfer Learning for NLP": after the attention and
the FFN output projections, before the residual add, y -> y + up(act(down(y))) with a bottleneck
of size r << d; the adapters and the layer norms train. He et al. (2022), "Towards a Unified View
of Parameter-Efficient Transfer Learning": a parallel adapter beside the FFN that reads the FFN
input x, FFN(x) + s·A(x), with s = 4.

How this code differs from the papers:
- Initialisation as in He et al.'s code: the up-projection (weight and bias) starts at exactly
  zero, so the adapted model equals the backbone bit for bit at step 0; the down-projection keeps
  `nn.Linear`'s default weight init and a zero bias. Houlsby drew both projections from a
  truncated N(0, 1e-2) (near-identity, not identity).
- A sequential adapter wraps the output projection itself, so on BERT and GPT-2 it sits before the
  sublayer's dropout instead of after it (no difference in eval mode).
- An optional LayerNorm in front of the down-projection (`layer_norm`, He et al.'s option).
- Where adapters go is read from block-relative module names (`LAYOUTS`), not from model classes;
  a new architecture is one more row there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.activations import ACT2FN

from ftlab.errors import FTLabError
from ftlab.methods.base import Method, set_trainable
from ftlab.models.anatomy import find_blocks


class Bottleneck(nn.Module):
    """up(act(down(norm(x)))): d -> r -> d, zero at initialisation; `enabled` is read by the wrappers."""

    def __init__(
        self,
        d: int,
        r: int,
        activation: str = "relu",
        layer_norm: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d, device=device, dtype=dtype) if layer_norm else nn.Identity()
        self.down = nn.Linear(d, r, device=device, dtype=dtype)  # (..., d) -> (..., r)
        self.act = ACT2FN[activation]
        self.up = nn.Linear(r, d, device=device, dtype=dtype)  # (..., r) -> (..., d)
        nn.init.zeros_(self.down.bias)  # a random bias could leave ReLU units dead on every token from the start
        nn.init.zeros_(self.up.weight)  # zero output at start: the wrapped model is the backbone
        nn.init.zeros_(self.up.bias)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(self.norm(x))))


class AdapterWrap(nn.Module):
    """A backbone module with a bottleneck beside it; the module stays reachable as `base_layer` (as in peft)."""

    def __init__(self, base_layer: nn.Module, adapter: Bottleneck, scale: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.scale = scale


class SequentialWrap(AdapterWrap):
    """Houlsby: y = base(x) (an output projection, (..., d)); returns y + s·A(y), before the residual add."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.base_layer(*args, **kwargs)
        if not self.adapter.enabled:
            return y
        return y + self.scale * self.adapter(y)


class ParallelWrap(AdapterWrap):
    """He et al.: an FFN that returns its output before the residual add (Llama, GPT-2): FFN(x) + s·A(x)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if not self.adapter.enabled:
            return out
        return out + self.scale * self.adapter(x)


class ParallelResidualWrap(AdapterWrap):
    """He et al. where the FFN output and the residual are fused (BERT's `BertOutput`).

    `BertOutput(h, x) = LayerNorm(dropout(dense(h)) + x)` with x the FFN input (also its residual).
    Passing x + s·A(x) as the residual gives LayerNorm(FFN(x) + s·A(x) + x): the same as adding
    s·A(x) to the FFN output before the residual add, without touching BERT's code.
    """

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        if self.adapter.enabled:
            input_tensor = input_tensor + self.scale * self.adapter(input_tensor)
        return self.base_layer(hidden_states, input_tensor)


@dataclass(frozen=True)
class Layout:
    """Where adapters go in one block, by module names relative to the block."""

    family: str
    """Models with this layout (for messages)."""
    attn_out: str
    """The attention output projection: a sequential adapter goes after it."""
    ffn_out: str
    """The FFN output projection: a sequential adapter goes after it."""
    ffn: str
    """The FFN: a parallel adapter goes beside it."""
    parallel: type[AdapterWrap]
    """How a parallel adapter joins the FFN."""


LAYOUTS: tuple[Layout, ...] = (
    Layout("Llama, Mistral, Qwen", "self_attn.o_proj", "mlp.down_proj", "mlp", ParallelWrap),
    Layout("BERT, RoBERTa", "attention.output.dense", "output.dense", "output", ParallelResidualWrap),
    Layout("GPT-2", "attn.c_proj", "mlp.c_proj", "mlp", ParallelWrap),
)


def find_layout(block: nn.Module) -> Layout:
    names = {name for name, _ in block.named_modules()}
    for layout in LAYOUTS:
        if {layout.attn_out, layout.ffn_out, layout.ffn} <= names:
            return layout
    known = "; ".join(f"{x.family}: {x.attn_out}, {x.ffn_out}, {x.ffn}" for x in LAYOUTS)
    raise FTLabError(f"bottleneck adapters do not know where to go in block {type(block).__name__} (known: {known})")


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    d = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not isinstance(d, int):
        raise FTLabError(f"{type(model).__name__} has no config.hidden_size (or n_embd) to size the adapters by")
    return d


def is_norm(module: nn.Module) -> bool:
    """LayerNorm and RMSNorm, including the models' own classes (LlamaRMSNorm, T5LayerNorm)."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


Spot = tuple[str, type[AdapterWrap], float]
"""(block-relative module name, wrapper class, scale): one adapter per block."""


class BottleneckMethod(Method):
    """Shared by the bottleneck adapter methods: subclasses say where adapters go (`spots`).

    Args:
        size: Bottleneck size r (overrides reduction_factor).
        reduction_factor: r = hidden size // reduction_factor, when size is not set.
        activation: Nonlinearity between the projections, a name in transformers' ACT2FN (relu, gelu, silu, ...).
        layer_norm: A LayerNorm in front of each adapter's down-projection.
        scale: Multiplies the adapters' output (unset: the method's `default_scale`).
        train_norms: Also train the backbone's LayerNorm/RMSNorm weights (as Houlsby did).
        also_train: Regular expressions; parameters whose name matches any of them train too (e.g. a head).
    """

    supports_disable: ClassVar[bool] = True
    supports_fsdp: ClassVar[bool] = True
    supports_packing: ClassVar[bool] = True  # adapters act per token: position ids do not matter
    default_scale: ClassVar[float] = 1.0
    """`scale` when the config leaves it unset."""

    def __init__(
        self,
        size: int | None = None,
        reduction_factor: int = 16,
        activation: str = "relu",
        layer_norm: bool = False,
        scale: float | None = None,
        train_norms: bool = False,
        also_train: list[str] | None = None,
    ) -> None:
        if size is not None and size < 1:
            raise FTLabError(f"{self.name} size must be at least 1, got {size}")
        if reduction_factor < 1:
            raise FTLabError(f"{self.name} reduction_factor must be at least 1, got {reduction_factor}")
        if activation not in ACT2FN:
            raise FTLabError(f"{self.name} activation {activation!r} is unknown; choose one of {sorted(ACT2FN)}")
        self.size = size
        self.reduction_factor = reduction_factor
        self.activation = activation
        self.layer_norm = layer_norm
        self.scale = self.default_scale if scale is None else scale
        self.train_norms = train_norms
        self.also_train = list(also_train or [])
        # switching the adapters off gives back the base model only if nothing else trains
        self.supports_disable = not train_norms and not self.also_train
        try:
            self._regexes = [re.compile(p) for p in self.also_train]
        except re.error as err:
            raise FTLabError(
                f"{self.name} also_train {err.pattern!r} is not a valid regular expression: {err}"
            ) from err

    def spots(self, layout: Layout) -> list[Spot]:
        """Where this method puts adapters in a block of `layout`."""
        raise NotImplementedError

    def bottleneck_size(self, d: int) -> int:
        r = self.size if self.size is not None else d // self.reduction_factor
        if r < 1:
            raise FTLabError(
                f"{self.name} reduction_factor={self.reduction_factor} leaves no bottleneck for hidden {d}"
            )
        return r

    def apply(self, model: nn.Module) -> nn.Module:
        if any(isinstance(m, Bottleneck) for m in model.modules()):
            return model  # applied already (Lightning may call configure_model again)
        d = hidden_size(model)
        r = self.bottleneck_size(d)
        _, blocks = find_blocks(model)
        spots = self.spots(find_layout(blocks[0]))  # the blocks are all of one class
        for block in blocks:
            # Find every parent before wrapping anything: the hybrid wraps both `mlp.down_proj` and `mlp`.
            targets = [
                (block.get_submodule(path.rpartition(".")[0]), path.rpartition(".")[2], wrap, scale)
                for path, wrap, scale in spots
            ]
            for parent, leaf, wrap, scale in targets:
                base = getattr(parent, leaf)
                like = next(base.parameters())  # adapters follow the backbone's device (meta too) and dtype
                adapter = Bottleneck(d, r, self.activation, self.layer_norm, device=like.device, dtype=like.dtype)
                setattr(parent, leaf, wrap(base, adapter, scale))
        set_trainable(model, self.chosen(model))
        return model

    def chosen(self, model: nn.Module) -> set[str]:
        """The adapters, the norms if `train_norms`, and whatever `also_train` matches."""
        names: set[str] = set()
        for prefix, module in model.named_modules():
            if isinstance(module, Bottleneck):
                names.update(f"{prefix}.{n}" for n, _ in module.named_parameters())
            elif self.train_norms and is_norm(module):
                names.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False))
        all_names = [n for n, _ in model.named_parameters()]
        for regex in self._regexes:
            hits = [n for n in all_names if regex.search(n)]
            if not hits:
                raise FTLabError(
                    f"{self.name} also_train {regex.pattern!r} matches no parameter (e.g. {all_names[:4]})"
                )
            names.update(hits)
        return names

    @contextmanager
    def disabled(self, model: nn.Module) -> Iterator[nn.Module]:
        adapters = [m for m in model.modules() if isinstance(m, Bottleneck)]
        before = [a.enabled for a in adapters]
        for adapter in adapters:
            adapter.enabled = False
        try:
            yield model
        finally:
            for adapter, enabled in zip(adapters, before, strict=True):
                adapter.enabled = enabled
