"""LoRA (Hu et al., 2021) through peft: low-rank updates W + (alpha/r)·B·A on chosen linear layers.

peft does the work (`ftlab.methods.peft_method`); this class is the `LoraConfig`, with the target names
checked against the backbone before injecting (listing what exists). The adapters switch off for a
free reference policy, merge for export, and merge for decoding when an RL objective asks.

peft's initialisations: `kaiming` (A random, B = 0: the model starts as the base), `gaussian`, and two that
start from the base weights' own structure, `pissa` (A, B from the top-r singular vectors and values of W,
Meng et al. 2024) and `olora` (from W's QR decomposition, Büyükakyüz 2024). These two move the principal
part out of the frozen weight (W_res = W − (α/r)·B₀A₀), so the model still starts as the base but the adapter
switched off is no longer the base: the run keeps a frozen copy as reference policy instead, and export
writes the adapter as the plain LoRA of the change B·A − B₀A₀ (rank 2r, peft's conversion), which loads on
the original base. Both are deterministic (a full SVD, a QR), so a resume or export rebuilds W_res exactly.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from peft import LoraConfig
from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.peft_method import PeftMethod, task_type

INITS: dict[str, bool | str] = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
"""`init` -> peft's `init_lora_weights`."""


class LoRA(PeftMethod):
    """Low-rank adaptation of linear layers (peft).

    Args:
        r: Rank of the update.
        alpha: Scale numerator: the update is multiplied by alpha / r (alpha / sqrt(r) with rslora).
        dropout: Dropout on the LoRA input.
        target_modules: Linear layer names to adapt (e.g. [q_proj, v_proj]), or "all-linear"
            (every linear layer but the output head).
        rslora: Rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski, 2023).
        dora: Weight-decomposed LoRA (Liu et al., 2024).
        modules_to_save: Modules trained in full beside the adapters (e.g. a classifier head).
        init: How A and B start: kaiming (peft's default), gaussian, pissa or olora (see the module docstring).
    """

    merges_for_decoding: ClassVar[bool] = True

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: list[str] | str = "all-linear",
        rslora: bool = False,
        dora: bool = False,
        modules_to_save: list[str] | None = None,
        init: Literal["kaiming", "gaussian", "pissa", "olora"] = "kaiming",
    ) -> None:
        if r < 1:
            raise FTLabError(f"{self.name} r must be at least 1, got {r}")
        if init not in INITS:
            raise FTLabError(f"{self.name} init must be one of {list(INITS)}, got {init!r}")
        if init in ("pissa", "olora") and dora:
            raise FTLabError(f"{self.name} init {init} cannot start a DoRA adapter; use init kaiming with dora")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules
        self.rslora = rslora
        self.dora = dora
        self.modules_to_save = modules_to_save
        self.init = init
        # pissa and olora rewrite the frozen weights: switching the adapter off no longer gives the base
        self.supports_disable = not self.rewrites_base

    @property
    def rewrites_base(self) -> bool:
        """The initialisation moved part of the frozen weights into the adapter (pissa, olora)."""
        return self.init in ("pissa", "olora")

    def config(self, model: nn.Module) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            use_rslora=self.rslora,
            use_dora=self.dora,
            modules_to_save=self.modules_to_save,
            init_lora_weights=INITS[self.init],
            task_type=task_type(model),
        )
