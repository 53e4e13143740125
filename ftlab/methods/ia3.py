"""IA³ (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning") through peft: learned vectors that rescale the keys, the values and the FFN's inner activations.

One vector per adapted layer (its output width; its input width for FFN layers), initialised to ones so
the adapted model starts as the backbone. The vectors train without weight decay (decay would pull them
towards zero, i.e. away from the backbone). Left unset, the targets are peft's per-architecture defaults
(Llama: k_proj, v_proj, down_proj; GPT-2: c_attn, mlp.c_proj; BERT: key, value, output.dense).
"""

from __future__ import annotations

from typing import Any, ClassVar

from peft import IA3Config
from torch import nn

from ftlab.methods.peft_method import PeftMethod, task_type


class IA3(PeftMethod):
    """Rescaling vectors on keys, values and FFN activations (peft).

    Args:
        target_modules: Layer names to rescale, or unset for peft's defaults of the architecture.
        feedforward_modules: Those of `target_modules` that are FFN layers (rescaled on their input).
        modules_to_save: Modules trained in full beside the vectors (e.g. a classifier head).
    """

    supports_fsdp: ClassVar[bool] = False  # not tested sharded

    def __init__(
        self,
        target_modules: list[str] | None = None,
        feedforward_modules: list[str] | None = None,
        modules_to_save: list[str] | None = None,
    ) -> None:
        self.target_modules = target_modules
        self.feedforward_modules = feedforward_modules
        self.modules_to_save = modules_to_save

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        # the vectors scale (they start at one): weight decay would pull them towards zero, not towards the backbone
        return [{**group, "weight_decay": 0.0} for group in super().param_groups(model)]

    def config(self, model: nn.Module) -> IA3Config:
        return IA3Config(
            target_modules=self.target_modules,
            feedforward_modules=self.feedforward_modules,
            modules_to_save=self.modules_to_save,
            task_type=task_type(model),
        )
