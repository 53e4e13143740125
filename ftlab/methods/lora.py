"""LoRA (Hu et al., 2021) through peft: low-rank updates W + (alpha/r)·B·A on chosen linear layers.

peft does the work; this class only maps config to `LoraConfig`, checks the target names against
the backbone before injecting (listing what exists), and fills in the Method contract: the
adapters switch off for a free reference policy, and merge for export.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from ftlab.errors import FTLabError
from ftlab.methods.base import Method

_TASKS = {"ForCausalLM": TaskType.CAUSAL_LM, "ForSequenceClassification": TaskType.SEQ_CLS}


def linear_leaf_names(model: nn.Module) -> list[str]:
    """Names (last component) of the linear layers LoRA could target."""
    from transformers.pytorch_utils import Conv1D

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))})


def task_type(model: nn.Module) -> TaskType | None:
    """peft's task type from the model class: a causal LM, a sequence classifier, or a bare encoder/decoder."""
    name = type(model).__name__
    task = next((task for suffix, task in _TASKS.items() if name.endswith(suffix)), None)
    if task is None and name.endswith("Model"):  # BertModel, LlamaModel: hidden states for an objective's head
        return TaskType.FEATURE_EXTRACTION
    return task


class LoRA(Method):
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

    supports_disable: ClassVar[bool] = True

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
            raise FTLabError(f"LoRA r must be at least 1, got {r}")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules
        self.rslora = rslora
        self.dora = dora
        self.modules_to_save = modules_to_save

    def check_targets(self, model: nn.Module) -> None:
        if isinstance(self.target_modules, str):
            return
        names = [n for n, _ in model.named_modules()]
        missing = [t for t in self.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise FTLabError(
                f"LoRA target_modules {missing} match no module of {type(model).__name__}; "
                f"its linear layers are {linear_leaf_names(model)}"
            )

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

    def apply(self, model: nn.Module) -> nn.Module:
        if isinstance(model, PeftModel):
            return model
        self.check_targets(model)
        return get_peft_model(model, self.config(model))

    @contextmanager
    def disabled(self, model: nn.Module) -> Iterator[nn.Module]:
        with model.disable_adapter():
            yield model

    def merge(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()
