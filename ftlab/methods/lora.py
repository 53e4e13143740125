"""LoRA (Hu et al., 2021) through peft: low-rank updates W + (alpha/r)·B·A on chosen linear layers.

peft does the work (`ftlab.methods.peft_method`); this class is the `LoraConfig`, with the target names
checked against the backbone before injecting (listing what exists). The adapters switch off for a
free reference policy, merge for export, and merge for decoding when an RL objective asks.
"""

from __future__ import annotations

from typing import ClassVar

from peft import LoraConfig
from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.peft_method import PeftMethod, task_type


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
    ) -> None:
        if r < 1:
            raise FTLabError(f"{self.name} r must be at least 1, got {r}")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules
        self.rslora = rslora
        self.dora = dora
        self.modules_to_save = modules_to_save

    def config(self, model: nn.Module) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            use_rslora=self.rslora,
            use_dora=self.dora,
            modules_to_save=self.modules_to_save,
            task_type=task_type(model),
        )
